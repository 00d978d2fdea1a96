-- The examples, run as a user runs them: `sockrun examples/x.lua ...` in the
-- background on port 0 (or a temporary path), the address read from the
-- "listening on" line, and real clients (curl, nc, socat, python3) talking to
-- them. Every process started here is stopped by its PID after each test.
local H = require "helper"

-- The repository root, from this file's path (busted runs from anywhere).
local here = debug.getinfo(1, "S").source:match("^@(.*)$") or ""
local root = here:match("^(.*)/spec/[^/]*$") or "."

local function example(name)
  return root .. "/examples/" .. name .. ".lua"
end

local function quote_all(...)
  local t = {}
  for i = 1, select("#", ...) do t[i] = H.q(tostring(select(i, ...))) end
  return table.concat(t, " ")
end

-- Background processes ---------------------------------------------------

--- Stop a started example by its PID (SIGTERM, or `sig`), wait for it, and
-- collect its output: proc.stdout, proc.stderr, proc.code (exit status).
local function stop(proc, sig)
  if proc.stopped then return proc end
  proc.stopped = true
  os.execute(("kill -%s %d 2>/dev/null"):format(sig or "TERM", proc.pid))
  -- EOF on the pipe once the process has gone; `timeout -k` below bounds it.
  local rest = proc.pipe:read("a") or ""
  local _, _, code = proc.pipe:close()
  proc.code = code
  proc.stdout = table.concat(proc.lines, "\n") .. "\n" .. rest
  proc.stderr = H.slurp(proc.errpath)
  os.remove(proc.errpath)
  return proc
end

--- Start `sockrun examples/NAME.lua ARGS...` in the background and read its
-- stdout up to the "listening on" line. Returns a proc: pid, banner, port
-- (when the banner shows HOST:PORT), lines (stdout so far). The process is
-- stopped when the test ends, even when one of its assertions failed.
-- io.popen runs `sh -c`; `echo $$` prints that shell's PID and `exec` keeps
-- it for the command, so the PID is the process we later kill and reap.
-- `timeout -k 5 30` bounds a process that hangs; it passes our SIGTERM on.
local function start(name, ...)
  local errpath = os.tmpname()
  local cmd = ("echo $$; exec timeout -k 5 30 %s %s %s 2>%s"):format(
    H.q(H.sockrun), H.q(example(name)), quote_all(...), H.q(errpath))
  local pipe = assert(io.popen(cmd, "r"))
  local pid = math.tointeger(tonumber(pipe:read("l")))
  local proc = { pid = pid, pipe = pipe, errpath = errpath, lines = {} }
  H.defer(function() stop(proc) end)
  assert(pid, "no PID from the shell")
  for _ = 1, 50 do
    local line = pipe:read("l")
    if not line then break end
    proc.lines[#proc.lines + 1] = line
    if line:find("listening on", 1, true) then
      proc.banner = line
      break
    end
  end
  if not proc.banner then
    stop(proc)
    error(("%s printed no 'listening on' line\nstdout: %s\nstderr: %s")
      :format(name, proc.stdout, proc.stderr), 2)
  end
  proc.port = math.tointeger(tonumber(proc.banner:match("listening on %S-:(%d+)")))
  return proc
end

--- Start examples/NAME.lua on 127.0.0.1 and a free port.
local function serve(name)
  return start(name, "127.0.0.1", 0)
end

--- Start NAME as serve does, and tcp_proxy in front of it; returns both.
local function proxied(name)
  local target = serve(name)
  return target, start("tcp_proxy", 0, "127.0.0.1", target.port)
end

after_each(H.run_deferred)
after_each(H.assert_clean)

-- Clients --------------------------------------------------------------------

--- Run a shell command bounded to 10 s; returns stdout (stderr folded in
-- when `with_stderr`), exit status.
local function run(cmd, with_stderr)
  return H.sh("timeout 10 " .. cmd .. (with_stderr and " 2>&1" or " 2>/dev/null"))
end

--- Feed `text` to the standard input of a shell command run as `run` does.
local function pipe_to(text, cmd)
  return run("printf %s " .. H.q(text) .. " | " .. cmd)
end

--- Talk to 127.0.0.1:port with `nc -N` (which half-closes after `text`).
local function nc(text, port)
  return pipe_to(text, "nc -N 127.0.0.1 " .. port)
end

--- Talk to the unix socket at `path` with socat.
local function socat_unix(text, path)
  return pipe_to(text, "socat - UNIX-CONNECT:" .. H.q(path))
end

-- What every python3 client below starts with: connect() to 127.0.0.1 and
-- the port in argv[1] (or `port`), recv_all() up to the peer's EOF.
local PY_PRELUDE = [[
import socket, sys
def connect(port=None):
    return socket.create_connection(("127.0.0.1", int(port or sys.argv[1])), timeout=8)
def recv_all(s):
    got = b""
    while True:
        b = s.recv(65536)
        if not b: return got
        got += b
]]

--- Run a python3 client (after PY_PRELUDE) with arguments; returns its
-- stdout+stderr, exit status.
local function py(src, ...)
  return run("python3 -c " .. H.q(PY_PRELUDE .. src) .. " " .. quote_all(...), true)
end

--- Run an example to completion (a client) with the arguments in the list
-- `args` and, when given, `stdin`; bounded. Returns stdout, stderr, status.
local function run_example(name, args, stdin)
  return H.run(H.q(example(name)) .. " " .. quote_all(table.unpack(args)),
    { stdin = stdin })
end

--- Assert that a client (stdout, exit status) printed `want` and exited 0.
local function assert_output(want, out, code)
  assert.equal(want, out)
  assert.equal(0, code)
end

--- Assert that a curl trace shows two answers on one kept-alive connection.
local function assert_kept_alive(trace)
  assert.matches("Re%-using existing connection", trace)
  local _, n = trace:gsub("Hello, World!", "")
  assert.equal(2, n)
end

-- Python clients used by several tests.

-- Send argv[2] bytes of a pattern, half-close, read to EOF; print the byte
-- count and whether the reply matched.
local PY_BULK = [[
n = int(sys.argv[2])
data = bytes((i * 7 + i // 251) % 256 for i in range(n))
s = connect()
s.sendall(data)
s.shutdown(socket.SHUT_WR)
got = recv_all(s)
s.close()
print(len(got), got == data)
]]

-- Connect, send argv[2] as one chunk, half-close, print the reply up to EOF.
local PY_SEND_EOF = [[
s = connect()
s.sendall(sys.argv[2].encode())
s.shutdown(socket.SHUT_WR)
got = recv_all(s)
s.close()
sys.stdout.write(got.decode())
]]

-- Open argv[2] connections at once, send "argv[3] i\n" on each, and read
-- the replies back in reverse order; print whether each one matched.
local PY_MANY = [[
n, label = int(sys.argv[2]), sys.argv[3].encode()
socks = [connect() for _ in range(n)]
for i, s in enumerate(socks): s.sendall(b"%s %d\n" % (label, i))
for i, s in reversed(list(enumerate(socks))):
    want = b"%s %d\n" % (label, i)
    got = b""
    while len(got) < len(want): got += s.recv(100)
    print(got == want)
for s in socks: s.close()
]]

--------------------------------------------------------------------------------

describe("examples/echo_server.lua", function()
  it("prints where it listens and how to try it", function()
    local srv = serve("echo_server")
    assert.is_truthy(srv.port)
    assert.is_true(srv.port > 0)
    assert.matches("listening on 127%.0%.0%.1:" .. srv.port, srv.banner)
    assert.matches("try: nc 127.0.0.1 " .. srv.port, srv.banner, 1, true)
  end)

  it("echoes the lines nc sends, then closes when nc half-closes", function()
    local srv = serve("echo_server")
    assert_output("hello\nworld\n", nc("hello\nworld\n", srv.port))
  end)

  it("echoes a megabyte byte for byte", function()
    local srv = serve("echo_server")
    assert_output("1048576 True\n", py(PY_BULK, srv.port, 1024 * 1024))
  end)

  it("serves several clients at once", function()
    local srv = serve("echo_server")
    assert_output(("True\n"):rep(5), py(PY_MANY, srv.port, 5, "client"))
  end)

  it("logs each connection and disconnection on stdout", function()
    local srv = serve("echo_server")
    nc("x", srv.port)
    -- Once nc has its reply and EOF, the server has logged both lines.
    stop(srv)
    assert.matches("connection from 127%.0%.0%.1:%d+", srv.stdout)
    assert.matches("127%.0%.0%.1:%d+ disconnected", srv.stdout)
  end)

  it("exits with status 1 and says why when the port is taken", function()
    local srv = serve("echo_server")
    local err = H.assert_exit(1, run_example("echo_server", { "127.0.0.1", srv.port }))
    assert.matches("cannot listen on 127%.0%.0%.1:" .. srv.port, err)
    assert.matches("address already in use", err)
  end)

  it("exits with status 2 and a usage line on a bad port", function()
    local err = H.assert_exit(2, run_example("echo_server", { "127.0.0.1", "notaport" }))
    assert.matches("usage: echo_server.lua", err, 1, true)
  end)
end)

describe("examples/echo_client.lua", function()
  it("sends each argument and prints each echoed reply", function()
    local srv = serve("echo_server")
    local out, err, code = run_example("echo_client",
      { "127.0.0.1", srv.port, "hello", "two words", "last" })
    assert.equal("", err)
    assert.equal("hello\ntwo words\nlast\n", out)
    assert.equal(0, code)
  end)

  it("sends the lines of stdin when given no messages", function()
    local srv = serve("echo_server")
    local out, err, code = run_example("echo_client",
      { "127.0.0.1", srv.port }, "one\ntwo\nthree\n")
    assert.equal("", err)
    assert.equal("one\ntwo\nthree\n", out)
    assert.equal(0, code)
  end)

  it("exits with status 1 and says why when nobody listens", function()
    local port = H.free_port()
    local err = H.assert_exit(1,
      run_example("echo_client", { "127.0.0.1", port, "hello" }))
    assert.matches("cannot connect to 127%.0%.0%.1:" .. port .. ": connection refused", err)
  end)
end)

describe("examples/chat_server.lua", function()
  it("broadcasts each line to the other clients, with join, nick and leave notices", function()
    local srv = serve("chat_server")
    local out, code = py([[
def client():
    s = connect()
    return s, s.makefile("rb")
def name(s):
    return "127.0.0.1:%d" % s.getsockname()[1]
def line(f):
    return f.readline().decode().rstrip("\n")

a, fa = client()
print("A1", line(fa) == "* welcome, you are %s (1 here)" % name(a))
b, fb = client()
print("B1", line(fb) == "* welcome, you are %s (2 here)" % name(b))
print("A2", line(fa) == "* %s joined" % name(b))

a.sendall(b"hello from a\n")
print("B2", line(fb) == "%s: hello from a" % name(a))
b.sendall(b"hi a\r\n")
print("A3", line(fa) == "%s: hi a" % name(b))

b.sendall(b"/nick bob\n")
print("B3", line(fb) == "* you are now bob")
print("A4", line(fa) == "* %s is now bob" % name(b))
b.sendall(b"it is me\n")
print("A5", line(fa) == "bob: it is me")

fb.close(); b.close()             # (the makefile holds the socket open too)
print("A6", line(fa) == "* bob left")
fa.close(); a.close()
]], srv.port)
    assert.equal("A1 True\nB1 True\nA2 True\nB2 True\nA3 True\nB3 True\n" ..
      "A4 True\nA5 True\nA6 True\n", out)
    assert.equal(0, code)
  end)

  it("does not echo a line back to its sender", function()
    local srv = serve("chat_server")
    assert_output("nothing\n", py([[
s = connect()
f = s.makefile("rb")
f.readline()                     # the welcome
s.sendall(b"alone here\n")
s.settimeout(0.3)
try:
    print(repr(s.recv(100)))
except socket.timeout:
    print("nothing")
s.close()
]], srv.port))
  end)

  it("drops a client that stopped reading, and the others go on", function()
    local srv = serve("chat_server")
    local out, code = py([[
def client():
    s = connect()
    f = s.makefile("rb")
    f.readline()                    # the welcome
    return s, f
a, fa = client()                    # reads nothing more from here on
b, fb = client()
b.sendall((b"x" * 99 + b"\n") * 80000)  # 8 MB for a: more than it can hold
c, fc = client()
c.sendall(b"from c\n")
ok = left = False
for _ in range(10):                 # until c's line, and a's leaving
    l = fb.readline().decode()
    ok = ok or l.endswith(": from c\n")
    left = left or l.endswith(" left\n")
    if ok and left:
        break
print("B got C", ok, "and A left", left)
a.settimeout(20)                    # a was dropped: its connection ends
while a.recv(1 << 16):
    pass
e = connect()
print(e.makefile("rb").readline().decode().endswith("(3 here)\n"))
for s in (a, b, c, e):
    s.close()
]], srv.port)
    assert.equal("B got C True and A left True\nTrue\n", out)
    assert.equal(0, code)
    stop(srv)
    assert.is_nil(srv.stderr:find("busy", 1, true), srv.stderr)
  end)

  it("logs joins and leaves on stdout", function()
    local srv = serve("chat_server")
    local out = py([[
s = connect()
s.makefile("rb").readline()
print(s.getsockname()[1])
s.shutdown(socket.SHUT_WR)
s.recv(100)                      # EOF once the server has let us go
s.close()
]], srv.port)
    local port = assert(out:match("^(%d+)"))
    stop(srv)
    assert.matches("127.0.0.1:" .. port .. " joined", srv.stdout, 1, true)
    assert.matches("127.0.0.1:" .. port .. " left", srv.stdout, 1, true)
  end)
end)

describe("examples/http_hello.lua", function()
  it("answers two requests on one keep-alive connection (curl)", function()
    local srv = serve("http_hello")
    local url = ("http://127.0.0.1:%d/"):format(srv.port)
    local body = run(("curl -s %s %s"):format(url, url))
    assert.equal("Hello, World!Hello, World!", body)
    local trace = run(("curl -sv -o /dev/null -o /dev/null %s %s"):format(url, url), true)
    assert.matches("Re%-using existing connection", trace)
    local _, n = trace:gsub("< HTTP/1%.1 200 OK", "")
    assert.equal(2, n)
    assert.matches("< Content%-Length: 13", trace)
    assert.matches("< Connection: keep%-alive", trace)
  end)

  it("closes the connection after a request with Connection: close", function()
    local srv = serve("http_hello")
    local out, code = py([[
s = connect()
s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
got = recv_all(s)                # ends when the server closes: EOF
s.close()
sys.stdout.write(got.decode())
]], srv.port)
    assert.equal("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n" ..
      "Content-Length: 13\r\nConnection: close\r\n\r\nHello, World!", out)
    assert.equal(0, code)
  end)

  it("closes after an HTTP/1.0 request without keep-alive (curl --http1.0)", function()
    local srv = serve("http_hello")
    local trace = run(("curl -sv --http1.0 http://127.0.0.1:%d/"):format(srv.port), true)
    assert.matches("< Connection: close", trace)
    assert.matches("Hello, World!", trace)
  end)

  it("answers pipelined requests in order, reading past request bodies", function()
    local srv = serve("http_hello")
    local out, code = py([[
s = connect()
s.sendall(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
          b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 27\r\n\r\n"
          b"GET /not-a-request HTTP/1.1"
          b"HEAD /c HTTP/1.1\r\nHost: x\r\n\r\n"
          b"GET /d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
got = recv_all(s)
s.close()
print(got.count(b"HTTP/1.1 200 OK\r\n"), got.count(b"Hello, World!"),
      got.count(b"Connection: keep-alive"), got.count(b"Connection: close"))
]], srv.port)
    -- Four answers; HEAD has no body; the last one closes.
    assert.equal("4 3 3 1\n", out)
    assert.equal(0, code)
  end)

  it("closes, without an error, a connection whose Content-Length is not a count",
    function()
      local srv = serve("http_hello")
      local out, code = py([[
for bad in (b"1.5", b"1e30", b"-3", b"ten"):
    s = connect()
    s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: " + bad + b"\r\n\r\n")
    print(repr(recv_all(s)))
    s.close()
]], srv.port)
      assert.equal(string.rep("b''\n", 4), out)
      assert.equal(0, code)
      stop(srv)
      assert.equal("", srv.stderr)
    end)

  it("carries request bodies sent by curl on a kept-alive connection", function()
    local srv = serve("http_hello")
    local url = ("http://127.0.0.1:%d/"):format(srv.port)
    assert_kept_alive(run(("curl -sv -d 'name=value' %s -d 'second=body' %s")
      :format(url, url), true))
  end)
end)

describe("examples/udp_echo.lua", function()
  it("sends each datagram back to its sender (python3)", function()
    local srv = serve("udp_echo")
    assert.matches("listening on 127%.0%.0%.1:%d+", srv.banner)
    assert_output("True\nTrue\nTrue\n", py([[
addr = ("127.0.0.1", int(sys.argv[1]))
a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); a.settimeout(8)
b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); b.settimeout(8)
a.sendto(b"first from a", addr)
b.sendto(b"from b", addr)
a.sendto(b"x" * 1400, addr)
print(a.recvfrom(2048) == (b"first from a", addr))
print(b.recvfrom(2048) == (b"from b", addr))
print(a.recvfrom(2048) == (b"x" * 1400, addr))
a.close(); b.close()
]], srv.port))
  end)

  it("echoes a datagram sent with socat", function()
    local srv = serve("udp_echo")
    assert_output("ping\n", pipe_to("ping\n", "socat -t 2 - UDP:127.0.0.1:" .. srv.port))
  end)

  it("exits with status 1 and says why when the port is taken", function()
    local srv = serve("udp_echo")
    local err = H.assert_exit(1, run_example("udp_echo", { "127.0.0.1", srv.port }))
    assert.matches("cannot bind 127%.0%.0%.1:" .. srv.port .. ": address already in use", err)
  end)
end)

describe("examples/unix_echo.lua", function()
  it("echoes over its socket path (socat)", function()
    local path = H.tmppath("unix-echo")
    local srv = start("unix_echo", path)
    assert.matches("listening on " .. path, srv.banner, 1, true)
    assert_output("over unix\n", socat_unix("over unix\n", path))
  end)

  it("echoes a megabyte through nc -U", function()
    local path = H.tmppath("unix-echo")
    start("unix_echo", path)
    local out, code = run(("head -c 1048576 /dev/zero | tr '\\0' 'z' | nc -N -U %s | wc -c")
      :format(H.q(path)))
    assert.equal(0, code)
    assert.equal("1048576", out:match("%d+"))
  end)

  it("removes its socket file and exits 0 on SIGTERM", function()
    local path = H.tmppath("unix-echo")
    local srv = start("unix_echo", path)
    assert.is_truthy(os.rename(path, path))  -- it exists
    stop(srv, "TERM")
    assert.equal(0, srv.code)
    assert.is_nil(io.open(path))
    assert.is_nil((os.rename(path, path)))
    assert.matches("SIGTERM, removing " .. path, srv.stdout, 1, true)
  end)

  it("removes its socket file and exits 0 on SIGINT", function()
    local path = H.tmppath("unix-echo")
    local srv = start("unix_echo", path)
    stop(srv, "INT")
    assert.equal(0, srv.code)
    assert.is_nil((os.rename(path, path)))
  end)

  it("replaces a stale socket file left by a dead server", function()
    local path = H.tmppath("unix-echo")
    -- A bound socket closed without unlinking leaves the file behind.
    local _, pcode = py([[
s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.close()]], path)
    assert.equal(0, pcode)
    assert.is_truthy(os.rename(path, path))
    start("unix_echo", path)
    local out = socat_unix("fresh\n", path)
    assert.equal("fresh\n", out)
  end)

  it("refuses to start when another server listens on the path", function()
    local path = H.tmppath("unix-echo")
    start("unix_echo", path)
    local err = H.assert_exit(1, run_example("unix_echo", { path }))
    assert.matches("another server is already listening there", err, 1, true)
    -- and the first one still works
    assert.equal("still\n", (socat_unix("still\n", path)))
  end)

  it("leaves a regular file at the path alone", function()
    local path = H.tmppath("unix-echo")
    local f = assert(io.open(path, "w"))
    f:write("precious")
    f:close()
    local err = H.assert_exit(1, run_example("unix_echo", { path }))
    assert.matches("not a socket", err, 1, true)
    assert.equal("precious", H.slurp(path))
    os.remove(path)
  end)

  it("listens in the abstract namespace with @name", function()
    local name = ("sockrun-spec-%d-abstract"):format(H.pid())
    local srv = start("unix_echo", "@" .. name)
    assert.matches("listening on @" .. name, srv.banner, 1, true)
    local out = pipe_to("abstract\n", "socat - ABSTRACT-CONNECT:" .. name)
    assert.equal("abstract\n", out)
  end)
end)

describe("examples/tcp_proxy.lua", function()
  it("forwards a conversation to echo_server and back (nc)", function()
    local echo, proxy = proxied("echo_server")
    assert.matches("listening on 127%.0%.0%.1:%d+, forwarding to 127%.0%.0%.1:" .. echo.port,
      proxy.banner)
    assert_output("through\nthe proxy\n", nc("through\nthe proxy\n", proxy.port))
  end)

  it("passes a half-close on and copies a megabyte intact", function()
    local _, proxy = proxied("echo_server")
    -- The reply ends only if the client's FIN reaches echo_server through the
    -- proxy and echo_server's FIN comes back the same way.
    assert_output("1048576 True\n", py(PY_BULK, proxy.port, 1024 * 1024))
  end)

  it("keeps the reply direction open after the client half-closes", function()
    local _, proxy = proxied("http_hello")
    local out, code = py(PY_SEND_EOF, proxy.port, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert.equal(0, code)
    assert.matches("^HTTP/1%.1 200 OK\r\n.*\r\n\r\nHello, World!$", out)
  end)

  it("serves several connections at once", function()
    local _, proxy = proxied("echo_server")
    assert_output(("True\n"):rep(4), py(PY_MANY, proxy.port, 4, "conn"))
  end)

  it("carries an HTTP keep-alive connection to http_hello (curl)", function()
    local _, proxy = proxied("http_hello")
    local url = ("http://127.0.0.1:%d/"):format(proxy.port)
    assert_kept_alive(run(("curl -sv %s %s"):format(url, url), true))
  end)

  it("closes the client's connection when the target refuses", function()
    local port = H.free_port()
    local proxy = start("tcp_proxy", 0, "127.0.0.1", port)
    assert_output("b''\n", py([[
s = connect()
print(repr(s.recv(100)))         # b'' : closed without a byte
s.close()
]], proxy.port))
    stop(proxy)
    assert.matches("cannot reach 127%.0%.0%.1:" .. port .. ": connection refused", proxy.stdout)
  end)

  it("exits with status 2 and a usage line on a bad port", function()
    local err = H.assert_exit(2, run_example("tcp_proxy", { "x", "127.0.0.1", 7000 }))
    assert.matches("usage: tcp_proxy.lua", err, 1, true)
  end)
end)
