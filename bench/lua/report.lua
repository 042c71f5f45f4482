-- wrk "done" hook: print one machine-readable line for the harness.
-- Latencies are in microseconds; "status" counts responses with a status >= 400.
local function num(x)
  return string.format("%.3f", x)
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write("BENCH_JSON {")
  io.write('"duration_us":', summary.duration, ",")
  io.write('"requests":', summary.requests, ",")
  io.write('"bytes":', summary.bytes, ",")
  io.write('"connect_errors":', e.connect, ",")
  io.write('"read_errors":', e.read, ",")
  io.write('"write_errors":', e.write, ",")
  io.write('"timeouts":', e.timeout, ",")
  io.write('"non_2xx":', e.status, ",")
  io.write('"lat_mean_us":', num(latency.mean), ",")
  io.write('"lat_max_us":', num(latency.max), ",")
  io.write('"lat_p50_us":', num(latency:percentile(50)), ",")
  io.write('"lat_p90_us":', num(latency:percentile(90)), ",")
  io.write('"lat_p99_us":', num(latency:percentile(99)))
  io.write("}\n")
end
