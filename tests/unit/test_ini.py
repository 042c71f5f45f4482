"""The uwsgi.ini reader: uWSGI's own reading of the format (checked against real uWSGI, the
pyuwsgi wheel, where it matters), then what each option means for Drover."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from drover.config import Config, ConfigError, load, load_config
from drover.config.ini import read_ini

ENV = {"HOME": "/home/site", "DEPLOY": "production", "EMPTY": ""}


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text)
    return path


def options(path: Path | str, environ: dict[str, str] | None = None) -> list[tuple[str, str]]:
    reader = read_ini([(str(path), "test")], ENV if environ is None else environ)
    assert not reader.errors, reader.errors
    return [(option.key, option.value) for option in reader.options]


def config(tmp_path: Path, text: str, *argv: str,
           environ: dict[str, str] | None = None) -> Config:
    path = write(tmp_path, "uwsgi.ini", text)
    return load_config(["--ini", str(path), *argv], environ or {})


def problems(tmp_path: Path, text: str, *argv: str) -> list[str]:
    path = write(tmp_path, "uwsgi.ini", text)
    with pytest.raises(ConfigError) as info:
        load_config(["--ini", str(path), *argv], {})
    return list(info.value.problems)


def notes(tmp_path: Path, text: str) -> list[str]:
    path = write(tmp_path, "uwsgi.ini", text)
    return [message for _, message in load(["--ini", str(path)], {}).notes]


# -- real uWSGI as the reference ------------------------------------------------------------------


def uwsgi_show_config(path: Path, environ: dict[str, str]) -> list[tuple[str, str]]:
    """The option list real uWSGI (the pyuwsgi wheel, a test dependency) builds from ``path``
    (its --show-config), without starting: an unknown --clock stops it right after printing."""
    done = subprocess.run(
        [sys.executable, "-c", "import sys, pyuwsgi; pyuwsgi.run(sys.argv[1:])", "--ini",
         str(path), "--show-config", "--clock", "drover-test-none"],
        env={**environ, "PATH": os.environ.get("PATH", "")}, cwd=path.parent,
        capture_output=True, text=True, timeout=30, check=False)
    text = done.stdout + done.stderr
    assert "[uwsgi]" in text, text
    body = text.split("[uwsgi]\n", 1)[1].split(";end of configuration", 1)[0]
    pairs = [tuple(line.split(" = ", 1)) for line in body.splitlines() if " = " in line]
    assert pairs[0] == ("ini", str(path)), pairs
    return [(k, v) for k, v in pairs[1:] if k not in ("show-config", "clock")]  # type: ignore


REFERENCE_FILES = {
    "placeholders_and_magic": """
[uwsgi]
project = mysite
base = /srv/%(project)
module = %(project).wsgi:application
chdir = %d
name = %n
path = %p
file = %s
ext = %e
dirname = %c
first = %0
host = %h
percent = 100%%
cores = %k
processes = %(%k * 2)
threads = %(%k + 1)
sum = %(processes cores + 2)
less = %(processes - 1)
div = %(processes / 0)
more = %(cores ++)
joined = %(project base)
missing = %(nope)
unknown-magic = a%zb
""",
    "environment": """
[uwsgi]
home = $(HOME)/venv
socket = /run/$(DEPLOY).sock
unset = $(DROVER_TEST_UNSET_VARIABLE)
empty = [$(EMPTY)]
""",
    "syntax": """
; a comment
# another comment
[other]
processes = 99
[uwsgi]
   master
strict=false
  processes   =   4   ; not a comment: uWSGI keeps it
env = A=1
env = B=2
pythonpath = /a
pythonpath = /b
novalue =
[uwsgi2]
processes = 98
""",
    "logic": """
[uwsgi]
if-env = DEPLOY
env = MODE=%(_)
endif =
if-not-env = DROVER_TEST_UNSET_VARIABLE
not-set = yes
endif =
if-env = DROVER_TEST_UNSET_VARIABLE
never = 1
endif =
if-env = DEPLOY=staging
staging = 1
endif =
if-exists = %p
exists = %(_)
endif =
if-not-exists = /no/such/file
absent = 1
endif =
for = a b c
item = %(_)
endfor =
for-times = 2
count = %(_)
endfor =
if-opt = project
never-project = 1
endif =
project = x
if-opt = project=x
project-is-x = 1
endif =
""",
    "realistic_django": """
; deploy/uwsgi.ini of a Django site behind nginx
[uwsgi]
project = mysite
uid = www-data
gid = www-data
base = /srv/%(project)

chdir = %d
home = %(base)/venv
module = %(project).wsgi:application
env = DJANGO_SETTINGS_MODULE=%(project).settings.production
env = LANG=en_US.UTF-8

master = true
processes = %(%k * 2 + 1)
threads = 2
enable-threads = true
harakiri = 60
max-requests = 5000
max-requests-delta = 500
buffer-size = 32768

socket = /run/%(project)/%(project).sock
chmod-socket = 660
vacuum = true
die-on-term = true
procname-prefix = %n-
""",
    "includes": """
[uwsgi]
processes = 2
ini = :extra
ini = base.ini
ini = base.ini:other
after = %(from-base)
name-after-include = %n

[extra]
threads = 8
""",
}


@pytest.mark.parametrize("name", sorted(REFERENCE_FILES))
def test_option_list_matches_real_uwsgi(tmp_path: Path, name: str,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # uWSGI reads included files from the working directory
    write(tmp_path, "base.ini", "[uwsgi]\nfrom-base = yes\nbuffer-size = 32768\n"
                                "[other]\nfrom-other = %n\n")
    path = write(tmp_path, "uwsgi.ini", REFERENCE_FILES[name])
    # the second pass rewrites what the magic pass left: both must agree on every entry
    assert options(path) == uwsgi_show_config(path, ENV)


def test_placeholders_magic_and_math_resolve_as_uwsgi_documents(tmp_path: Path) -> None:
    path = write(tmp_path, "uwsgi.ini", REFERENCE_FILES["placeholders_and_magic"])
    got = dict(options(path))
    cores = os.cpu_count() or 1
    assert got["module"] == "mysite.wsgi:application"
    assert got["base"] == "/srv/mysite"
    assert got["chdir"] == f"{os.path.realpath(tmp_path)}/"
    assert (got["name"], got["file"], got["ext"]) == ("uwsgi", "uwsgi.ini", "ini")
    assert got["path"] == os.path.realpath(path)
    assert got["host"] == socket.gethostname()
    assert got["percent"] == "100%"
    assert got["processes"] == str(cores * 2)
    assert got["sum"] == str(int(f"{cores * 2}{cores}") + 2)  # words concatenate first
    assert got["div"] == "0"
    assert got["more"] == str(cores + 1)
    assert got["missing"] == "%(nope)"
    assert got["unknown-magic"] == "ab"


def test_environment_default_syntax_of_uwsgi_development_branch(tmp_path: Path) -> None:
    path = write(tmp_path, "uwsgi.ini", "[uwsgi]\na = $(NOPE:-fallback)\nb = $(EMPTY:-x)\n"
                                        "c = $(EMPTY-x)\nd = $(HOME:-x)\n")
    assert options(path) == [("a", "fallback"), ("b", "x"), ("c", ""), ("d", "/home/site")]


def test_else_of_uwsgi_development_branch(tmp_path: Path) -> None:
    path = write(tmp_path, "uwsgi.ini", "[uwsgi]\nif-env = NOPE\na = 1\nelse =\nb = 2\n"
                                        "endif =\nif-env = HOME\nc = 3\nelse =\nd = 4\nendif\n")
    assert [key for key, _ in options(path)] == ["if-env", "else", "b", "endif", "if-env", "c",
                                                 "else", "endif"]


def test_section_from_the_command_line_and_a_missing_section(tmp_path: Path) -> None:
    path = write(tmp_path, "deploy.ini", "[uwsgi]\nprocesses = 2\n[production]\nprocesses = 8\n")
    assert load_config(["--ini", f"{path}:production"], {}).workers == 8
    with pytest.raises(ConfigError, match=r"has no \[staging\] section \(\[uwsgi\], "
                                          r"\[production\]; from command line --ini\)"):
        load_config(["--ini", f"{path}:staging"], {})


def test_unreadable_include_names_the_line_that_asked(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    assert problems(tmp_path, "[uwsgi]\nprocesses = 2\nini = missing.ini\n") == [
        f"ini: cannot read 'missing.ini': No such file or directory "
        f"(from {tmp_path}/uwsgi.ini:3)"]
    write(tmp_path, "base.ini", "[uwsgi]\nthreads = 2\n")
    monkeypatch.chdir("/")
    assert problems(tmp_path, "[uwsgi]\nini = base.ini\n") == [
        f"ini: cannot read 'base.ini': No such file or directory (from {tmp_path}/uwsgi.ini:2);"
        f" a relative path is read from the working directory, as uWSGI does: write "
        f"%dbase.ini for the one beside {tmp_path}/uwsgi.ini"]


def test_nested_logic_blocks_are_refused(tmp_path: Path) -> None:
    found = problems(tmp_path, "[uwsgi]\nif-not-env = DROVER_TEST_UNSET\nif-env = PATH\n"
                               "processes = 2\nendif\n")
    assert found == [f"if-env: a logic block cannot open inside another ({tmp_path}/uwsgi.ini:3);"
                     " uWSGI refuses nested blocks too"]


def test_self_growing_placeholder_stops_instead_of_looping(tmp_path: Path) -> None:
    # uWSGI itself loops here until it runs out of memory
    path = write(tmp_path, "loop.ini", "[uwsgi]\nx = a%(x)\n")
    reader = read_ini([(str(path), "test")], {})
    assert reader.errors == [f"x: its placeholders expand without end ({path}:2)"]


# -- what the options mean for Drover --------------------------------------------------------------


def test_realistic_django_file_maps_onto_drover_settings(tmp_path: Path) -> None:
    text = f"""
[uwsgi]
project = testsite
base = {tmp_path}
chdir = %(base)
module = %(project).wsgi:application
home = {sys.prefix}
master = true
processes = %(%k * 2)
threads = 2
socket = %(base)/%(project).sock
chmod-socket = 660
vacuum = true
max-requests = 5000
buffer-size = 32768
env = DJANGO_SETTINGS_MODULE=%(project).settings
env = LANG=C.UTF-8
die-on-term = true
enable-threads = true
single-interpreter = true
need-app = true
plugins = python3
listen = 512
http-timeout = 60
"""
    got = config(tmp_path, text)
    assert got.app == "testsite.wsgi:application"
    assert got.chdir == str(tmp_path)
    assert got.home == sys.prefix
    assert got.workers == (os.cpu_count() or 1) * 2
    assert (got.threads, got.max_requests, got.buffer_size, got.backlog) == (2, 5000, 32768, 512)
    assert got.uwsgi == (f"{tmp_path}/testsite.sock",)
    assert got.http == ()
    assert got.chmod_socket == 0o660
    assert got.env == ("DJANGO_SETTINGS_MODULE=testsite.settings", "LANG=C.UTF-8")
    assert got.io_timeout == 60.0
    assert got.origin("workers") == f"{tmp_path}/uwsgi.ini:9 (processes)"
    assert got.origin("env", 1) == f"{tmp_path}/uwsgi.ini:17 (env)"


@pytest.mark.parametrize(("text", "field", "expected"), [
    ("module = app\ncallable = application", "app", "app:application"),
    ("module = app:create()\ncallable = other", "app", "app:create()"),
    ("wsgi-file = site.wsgi", "app", "./site.wsgi"),
    ("file = app.py\ncallable = app", "app", "app.py:app"),
    ("wsgi-file = deploy/site.py", "app", "deploy/site.py"),
    ("wsgi = pkg.wsgi", "app", "pkg.wsgi"),
    ("mount = /blog=blog.wsgi:application\nmanage-script-name = true", "mount",
     ("/blog=blog.wsgi:application",)),
    ("mount = /a=a.py\nmount = /b=b:app\ncallable = app\nmanage-script-name", "mount",
     ("/a=a.py:app", "/b=b:app")),
    ("http = :8080\nhttp-socket = 127.0.0.1:8081", "http", (":8080", "127.0.0.1:8081")),
    ("socket = /run/a.sock\nuwsgi-socket = 127.0.0.1:3031\nsocket = app.sock", "uwsgi",
     ("/run/a.sock", "127.0.0.1:3031", "unix:app.sock")),
    ("workers = 3", "workers", 3),
    ("processes = 3\nprocesses = 5", "workers", 5),
    ("pythonpath = /a\npython-path = /b\npp = /c", "pythonpath", ("/a", "/b", "/c")),
    ("virtualenv = /venv", "home", "/venv"),
    ("venv = /venv", "home", "/venv"),
    ("chmod-socket", "chmod_socket", 0o666),
    ("limit-post = 10485760", "limit_request_body", 10 * 1024**2),
    ("procname-prefix = mysite", "proc_name", "mysite"),
    ("socket-timeout = 4", "io_timeout", 4.0),
])
def test_uwsgi_names_map_onto_drover_settings(tmp_path: Path, text: str, field: str,
                                               expected: object) -> None:
    assert getattr(config(tmp_path, f"[uwsgi]\n{text}\n"), field) == expected


@pytest.mark.parametrize(("value", "expected"), [
    ("", True), ("true", True), ("1", True), ("yes", True), ("on", True), ("whatever", True),
    ("false", False), ("0", False), ("no", False), ("off", False), ("FALSE", False)])
def test_booleans_read_as_uwsgi_reads_them(tmp_path: Path, value: str, expected: bool) -> None:
    assert config(tmp_path, f"[uwsgi]\npreload = {value}\n").preload is expected


def test_not_needed_options_leave_one_debug_line_each(tmp_path: Path) -> None:
    found = notes(tmp_path, "[uwsgi]\nmaster = true\nthunder-lock\nlazy-apps = true\n")
    assert found == [
        f"{tmp_path}/uwsgi.ini:2: master is not needed: Drover always runs a master process",
        f"{tmp_path}/uwsgi.ini:3: thunder-lock is not needed: Drover's workers do not contend "
        "for accept() on the same wake-up",
        f"{tmp_path}/uwsgi.ini:4: lazy-apps is not needed: each worker loads the app after "
        "fork unless --preload"]


def test_options_that_change_what_the_site_does_stop_the_start(tmp_path: Path) -> None:
    found = problems(tmp_path, "[uwsgi]\nprocesses = 2\nroute = ^/old redirect:/new\n"
                               "hook-master-start = unix_signal:15 gracefully_kill_them_all\n"
                               "https = :443,cert.pem,key.pem\n")
    ini = f"{tmp_path}/uwsgi.ini"
    assert found == [
        f"{ini}:3: route is not supported: uWSGI's internal routing is not available: do it in "
        "nginx or in the app ('route = REGEX donotlog:' is read as --log-exclude)",
        f"{ini}:4: hook-master-start is not supported: run the command from the start script "
        "or systemd (ExecStartPre=)",
        f"{ini}:5: https is not supported: terminate TLS in nginx (or another proxy) in front of "
        "Drover"]




def test_every_surveyed_uwsgi_option_has_an_answer_and_none_is_pending() -> None:
    """The options real uwsgi.ini files use: each is a Drover setting, not needed, or not
    supported with what to do instead; none is unknown or waiting for another change."""
    from drover.config.migrating import SURVEY
    from drover.config.uwsgi_names import describe

    answers = {key: describe(key) for key in SURVEY}
    assert not [key for key, text in answers.items() if text == "unknown"]
    assert not [key for key, text in answers.items() if text.startswith("pending")]
    for key in ("harakiri", "uid", "pidfile", "static-map", "stats", "log-format",
                "reload-on-rss", "worker-reload-mercy", "chown-socket", "daemonize",
                "log-5xx"):
        assert answers[key] == f"`--{key}`", key
    assert answers["logto"] == "`--logto`"  # Drover's --log-file, under uWSGI's name too


def test_options_added_by_the_other_changes_are_read_from_the_file(tmp_path: Path) -> None:
    read = config(tmp_path, "[uwsgi]\nharakiri = 30\nmax-requests-delta = 50\n"
                            "reload-on-rss = 300\nstats = 127.0.0.1:9191\nstats-http = true\n"
                            "logto = %dsite.log\nlog-5xx = true\nroute = ^/healthz$ donotlog:\n"
                            "touch-chain-reload = %dreload.txt\nreq-logger = file:%da.log\n"
                            "harakiri-verbose = true\n")
    assert read.harakiri == 30 and read.max_requests_jitter == 50
    assert read.reload_on_rss == 300
    assert (read.stats, read.stats_http) == ("127.0.0.1:9191", True)
    assert read.log_file == f"{tmp_path}/site.log" and read.log_5xx
    assert read.log_exclude == ("^/healthz$",)
    assert read.touch_reload == (f"{tmp_path}/reload.txt",)
    assert read.access_log == f"{tmp_path}/a.log"
    assert problems(tmp_path, "[uwsgi]\nreq-logger = syslog:drover\n") == [
        f"{tmp_path}/uwsgi.ini:2: req-logger = syslog:drover: 'syslog:drover': only file:PATH "
        "loggers are supported (use the journal or syslog through systemd for the others)"]


def test_a_setting_added_to_the_table_is_an_ini_key_at_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reader looks settings up by flag when it runs: a --future-option added to the table
    by another change is read from 'future-option = 30' with no change to the reader's
    tables (as --harakiri, --static-map and --stats were)."""
    import dataclasses

    from drover.config import settings, uwsgi_names

    info = settings.SettingInfo(settings.PROCESSES, ("--future-option",), "test",
                                settings.positive_int)
    extra = dataclasses.field(default=0, metadata={"drover": info})
    extra.name = "future_option"
    real = settings.setting_infos()
    monkeypatch.setattr(uwsgi_names, "setting_infos", lambda: [*real, (extra, info)])
    assert uwsgi_names.describe("future-option") == "`--future-option`"
    reader = read_ini([(str(write(tmp_path, "h.ini", "[uwsgi]\nfuture-option = 30\n")),
                        "test")], {})
    from drover.config.sources import Report

    report = Report()
    raws = uwsgi_names.translate(reader.options, False, set(), report)
    assert [(raw.name, raw.text, raw.key) for raw in raws
            if raw.name == "future_option"] == [("future_option", "30", "future-option")]
    assert report.errors == report.notes == []


def test_unknown_keys_warn_with_did_you_mean_and_placeholders_pass(tmp_path: Path) -> None:
    found = notes(tmp_path, "[uwsgi]\nproject = site\nmodule = %(project).wsgi\n"
                            "procesess = 4\n")
    assert found == [f"{tmp_path}/uwsgi.ini:4: unknown option 'procesess' ignored, as uWSGI "
                     "ignores it (did you mean processes?)"]


def test_strict_mode_makes_a_typo_an_error_naming_its_line(tmp_path: Path) -> None:
    found = problems(tmp_path, "[uwsgi]\nstrict = true\nproject = site\nmodule = %(project)\n"
                               "procesess = 4\nharakiri = 20\n")
    ini = f"{tmp_path}/uwsgi.ini"
    assert f"{ini}:5: unknown option 'procesess' (did you mean processes?) (strict mode)" in found
    assert (f"{ini}:3: unknown option 'project' (strict mode; for a placeholder write "
            "set-placeholder = project=VALUE)") in found
    assert not any(":6:" in line for line in found)  # harakiri is a Drover setting
    strict_ok = config(tmp_path, "[uwsgi]\nstrict = true\nset-placeholder = project=site\n"
                                 "module = %(project).wsgi\nmaster = true\n")
    assert strict_ok.app == "site.wsgi"


def test_bad_values_in_a_file_are_each_named_with_line_value_and_expectation(
        tmp_path: Path) -> None:
    found = problems(tmp_path, "[uwsgi]\nprocesses = many\nchmod-socket = 999\n"
                               "http = 127.0.0.1:99999\nbuffer-size = 0\n")
    ini = f"{tmp_path}/uwsgi.ini"
    assert found == [
        f"{ini}:2: processes = many: 'many' is not a whole number (Drover's --workers)",
        f"{ini}:3: chmod-socket = 999: '999' is not an octal file mode such as 660 "
        "(Drover's --chmod-socket)",
        f"{ini}:4: http = 127.0.0.1:99999: '127.0.0.1:99999' has no valid port (0-65535) "
        "(Drover's --http)",
        f"{ini}:5: buffer-size = 0: 0 is below the minimum of 1 (Drover's --buffer-size)"]


def test_abstract_unix_socket_is_refused(tmp_path: Path) -> None:
    assert problems(tmp_path, "[uwsgi]\nsocket = @drover\n") == [
        f"{tmp_path}/uwsgi.ini:2: socket = @drover: '@drover': abstract unix sockets are not "
        "supported; use a path"]


def test_mount_without_manage_script_name_is_refused(tmp_path: Path) -> None:
    assert problems(tmp_path, "[uwsgi]\nmount = /blog=blog:app\n") == [
        f"{tmp_path}/uwsgi.ini:2: mount without manage-script-name = true is not supported: "
        "Drover's --mount picks the app by the path's prefix and moves it to SCRIPT_NAME; add "
        "manage-script-name = true"]


def test_module_and_wsgi_file_together_are_refused(tmp_path: Path) -> None:
    ini = f"{tmp_path}/uwsgi.ini"
    assert problems(tmp_path, "[uwsgi]\nmodule = a\nwsgi-file = b.py\n") == [
        f"{ini}:2: module and {ini}:3: wsgi-file both name an app; keep one (or serve the "
        "other with mount)"]


def test_uwsgi_tcp_socket_beyond_loopback_warns_about_allowed_peers(tmp_path: Path) -> None:
    found = notes(tmp_path, "[uwsgi]\nsocket = 0.0.0.0:3031\n")
    assert found == [f"{tmp_path}/uwsgi.ini:2: socket = 0.0.0.0:3031: Drover accepts the uwsgi "
                     "protocol over TCP from loopback peers only; add --uwsgi-allow-from (e.g. "
                     "uwsgi-allow-from = 10.0.0.0/8) for a web server on another host"]
    assert notes(tmp_path, "[uwsgi]\nsocket = 0.0.0.0:3031\nuwsgi-allow-from = 10.0.0.0/8\n") == []


def test_unset_environment_variable_warns_and_stays_as_written(tmp_path: Path) -> None:
    found = notes(tmp_path, "[uwsgi]\nchdir = $(DROVER_TEST_NOT_SET)\n")
    assert found == [f"chdir = $(DROVER_TEST_NOT_SET): $(DROVER_TEST_NOT_SET) is not set in the "
                     f"environment; it stays as written ({tmp_path}/uwsgi.ini:2)"]


# -- the migration guide is the reader's own account ----------------------------------------------

SURVEY = [
    "master", "processes", "workers", "module", "chdir", "vacuum", "enable-threads", "socket",
    "harakiri", "chmod-socket", "wsgi-file", "die-on-term", "buffer-size", "max-requests",
    "threads", "http", "uid", "gid", "http-socket", "callable", "pidfile", "single-interpreter",
    "static-map", "home", "virtualenv", "env", "plugins", "thunder-lock", "lazy-apps", "need-app",
    "post-buffering", "memory-report", "ignore-sigpipe", "ignore-write-errors",
    "disable-write-exception", "daemonize", "disable-logging", "log-format", "http-timeout",
    "auto-procname", "chown-socket", "logto", "reload-on-rss", "strict", "worker-reload-mercy",
    "log-5xx", "cheaper", "stats", "hook-master-start", "route", "attach-daemon"]


def doc_rows(title: str) -> dict[str, str]:
    text = (Path(__file__).resolve().parents[2] / "docs" / "migrating.md").read_text()
    section = text.split(f"<!-- {title}: start -->", 1)[1].split(f"<!-- {title}: end -->", 1)[0]
    rows = {}
    for line in section.splitlines():
        if line.startswith("| `"):
            cells = [cell.strip() for cell in line.strip("|").split(" | ")]
            rows[cells[0].strip("`")] = cells[1]
    return rows


def test_migration_guide_uwsgi_table_says_what_the_reader_does() -> None:
    from drover.config.uwsgi_names import describe

    rows = doc_rows("uwsgi table")
    assert set(SURVEY) <= set(rows), set(SURVEY) - set(rows)
    assert {key: describe(key) for key in rows} == rows, (
        "regenerate the table: python -m drover.config.migrating")


def test_migration_guide_gunicorn_table_says_what_the_reader_does() -> None:
    from drover.config.migrating import describe_gunicorn

    rows = doc_rows("gunicorn table")
    assert {key: describe_gunicorn(key) for key in rows} == rows, (
        "regenerate the table: python -m drover.config.migrating")


@pytest.mark.parametrize(("text", "expected"), [
    ("callable = app\n", "{ini}:2: callable names no module or wsgi-file; ignored"),
    ("module = %(nope)\n", "module = %(nope): %(nope) names no option set in the file; it "
                           "stays as written ({ini}:2)"),
])
def test_warnings_of_the_reader(tmp_path: Path, text: str, expected: str) -> None:
    ini = f"{tmp_path}/uwsgi.ini"
    assert notes(tmp_path, f"[uwsgi]\n{text}")[0] == expected.format(ini=ini)


@pytest.mark.parametrize(("text", "expected"), [
    ("set-placeholder = nothing\n", "set-placeholder: 'nothing' is not NAME=VALUE ({ini}:2)"),
    ("for-readline = /no/such/list\nx = %(_)\nendfor\n",
     "for-readline: cannot read '/no/such/list': No such file or directory ({ini}:3)"),
    ("ini = {ini}\n", "ini '{ini}': files include each other in a loop (from {ini}:2)"),
])
def test_errors_of_the_reader(tmp_path: Path, text: str, expected: str) -> None:
    ini = f"{tmp_path}/uwsgi.ini"
    assert problems(tmp_path, f"[uwsgi]\n{text.format(ini=ini)}") == [expected.format(ini=ini)]


def test_section_alone_on_the_command_line_names_no_file() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(["--ini", ":production"], {})
    assert info.value.problems == ("ini ':production': ':SECTION' names no file to read again "
                                   "(from command line --ini)",)


def test_uid_and_gid_that_change_nothing_are_accepted(tmp_path: Path) -> None:
    import pwd

    user = pwd.getpwuid(os.getuid()).pw_name
    found = notes(tmp_path, f"[uwsgi]\nuid = {user}\ngid = {os.getgid()}\n")
    why = ("Drover already runs as that user or group" if os.getuid() == 0 else
           "Drover is not started as root, so there is no privilege to drop (uWSGI ignores "
           "it too)")
    ini = f"{tmp_path}/uwsgi.ini"
    assert found == [f"{ini}:2: uid = {user} is not needed: {why}",
                     f"{ini}:3: gid = {os.getgid()} is not needed: {why}"]


def test_uid_of_another_user_is_drovers_uid_when_started_as_root(tmp_path: Path) -> None:
    if os.getuid() != 0:
        pytest.skip("only root can drop privileges (uWSGI ignores uid otherwise, as Drover does)")
    read = config(tmp_path, "[uwsgi]\nuid = nobody\ngid = nogroup\n")
    assert (read.uid, read.gid) == ("nobody", "nogroup")


def test_plugins_other_than_python_and_http_are_named(tmp_path: Path) -> None:
    assert notes(tmp_path, "[uwsgi]\nplugins = python3,http\n") == [
        f"{tmp_path}/uwsgi.ini:2: plugins is not needed: Drover has no plugins: Python and HTTP "
        "are built in"]
    assert notes(tmp_path, "[uwsgi]\nplugin = python311 gevent\n")[1] == (
        f"{tmp_path}/uwsgi.ini:2: plugin = python311 gevent: Drover has no gevent plugin; the "
        "options that need it are reported on their own lines")


def test_log_format_variables_are_not_taken_for_missing_placeholders(tmp_path: Path) -> None:
    path = write(tmp_path, "uwsgi.ini", "[uwsgi]\nlog-format = %(addr) [%(ltime)] %(status)\n")
    reader = read_ini([(str(path), "test")], {})
    assert [(o.key, o.value) for o in reader.options] == [
        ("log-format", "%(addr) [%(ltime)] %(status)")]
    assert reader.warnings == []


def test_static_map_keeps_uwsgis_fall_through_to_the_app(tmp_path: Path) -> None:
    (tmp_path / "static").mkdir()
    (tmp_path / "root").mkdir()
    mapped = config(tmp_path, "[uwsgi]\nstatic-map = /static=%dstatic\nstatic-index = index.html\n")
    assert mapped.static_map == (f"/static={tmp_path}/static",)
    assert mapped.static_index == ("index.html",)
    assert mapped.static_fallthrough  # uWSGI passes a missing file to the app
    explicit = config(tmp_path, "[uwsgi]\nstatic-map = /s=%dstatic\nstatic-fallthrough = false\n")
    assert not explicit.static_fallthrough
    root = config(tmp_path, "[uwsgi]\ncheck-static = %droot\n")
    assert root.static_map == (f"/={tmp_path}/root",)
    assert root.static_fallthrough


def test_requests_are_logged_as_uwsgi_logs_them_unless_disabled(tmp_path: Path) -> None:
    logged = config(tmp_path, "[uwsgi]\nmodule = app\nlogto = %dsite.log\n")
    assert (logged.access_log, logged.log_format) == ("-", "uwsgi")
    assert logged.log_file == f"{tmp_path}/site.log"
    quiet = config(tmp_path, "[uwsgi]\nmodule = app\ndisable-logging = true\nlog-5xx = true\n")
    assert quiet.disable_logging and quiet.log_5xx and quiet.access_log == "-"
    own = config(tmp_path, "[uwsgi]\nmodule = app\nlog-format = %%(method) %%(uri)\n")
    assert own.log_format == "%(method) %(uri)"
    assert config(tmp_path, "[uwsgi]\nmodule = app\n", "--access-log", "/tmp/a.log"
                  ).access_log == "/tmp/a.log"
