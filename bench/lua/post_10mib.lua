-- POST a 10 MiB body on every request, then report like report.lua.
wrk.method = "POST"
wrk.body = string.rep("x", 10 * 1024 * 1024)
wrk.headers["Content-Type"] = "application/octet-stream"

dofile(os.getenv("BENCH_LUA_DIR") .. "/report.lua")
