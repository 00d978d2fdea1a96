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

local function slurp(path)
  local f = io.open(path)
  if not f then return "" end
  local s = f:read("a")
  f:close()
  return s
end

-- Background processes ---------------------------------------------------

local procs = {}

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
  proc.stderr = slurp(proc.errpath)
  os.remove(proc.errpath)
  return proc
end

--- Start `sockrun examples/NAME.lua ARGS...` in the background and read its
-- stdout up to the "listening on" line. Returns a proc: pid, banner, port
-- (when the banner shows HOST:PORT), lines (stdout so far).
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
  procs[#procs + 1] = proc
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

-- Kill whatever a test started, even when one of its assertions failed.
after_each(function()
  for _, proc in ipairs(procs) do stop(proc) end
  procs = {}
end)
after_each(H.assert_clean)

-- Clients --------------------------------------------------------------------

--- Run a shell command bounded to 10 s; returns stdout (stderr folded in
-- when `with_stderr`), exit status.
local function run(cmd, with_stderr)
  return H.sh("timeout 10 " .. cmd .. (with_stderr and " 2>&1" or " 2>/dev/null"))
end

--- Run a python3 program with arguments; returns its stdout+stderr, status.
local function py(src, ...)
  return run("python3 -c " .. H.q(src) .. " " .. quote_all(...), true)
end

--- Run an example to completion (a client), bounded; stdout, stderr, status.
local function run_example(name, args, stdin)
  local errpath = os.tmpname()
  local cmd = ("%stimeout 10 %s %s %s 2>%s"):format(
    stdin and ("printf %s " .. H.q(stdin) .. " | ") or "",
    H.q(H.sockrun), H.q(example(name)), args or "", H.q(errpath))
  local out, code = H.sh(cmd)
  local err = slurp(errpath)
  os.remove(errpath)
  return out, err, code
end

-- A port on which nobody listens: one the system just handed out and took back.
local function closed_port()
  local out = py([[
import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()]])
  return assert(math.tointeger(tonumber(out:match("%d+"))))
end

-- Python snippets used by several tests.

-- Send argv[3] bytes of a pattern, half-close, read to EOF; print the byte
-- count and whether the reply matched.
local PY_BULK = [[
import socket, sys
n = int(sys.argv[3])
data = bytes((i * 7 + i // 251) % 256 for i in range(n))
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=8)
s.sendall(data)
s.shutdown(socket.SHUT_WR)
got = bytearray()
while True:
    b = s.recv(65536)
    if not b: break
    got += b
s.close()
print(len(got), got == data)
]]

-- Connect, send argv[3] as one chunk, half-close, print the reply up to EOF.
local PY_SEND_EOF = [[
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=8)
s.sendall(sys.argv[3].encode())
s.shutdown(socket.SHUT_WR)
got = b""
while True:
    b = s.recv(65536)
    if not b: break
    got += b
s.close()
sys.stdout.write(got.decode())
]]

--------------------------------------------------------------------------------

describe("examples/echo_server.lua", function()
  it("prints where it listens and how to try it", function()
    local srv = start("echo_server", "127.0.0.1", 0)
    assert.is_truthy(srv.port)
    assert.is_true(srv.port > 0)
    assert.matches("listening on 127%.0%.0%.1:" .. srv.port, srv.banner)
    assert.matches("try: nc 127.0.0.1 " .. srv.port, srv.banner, 1, true)
  end)

  it("echoes the lines nc sends, then closes when nc half-closes", function()
    local srv = start("echo_server", "127.0.0.1", 0)
    local out, code = run(("printf 'hello\\nworld\\n' | nc -N 127.0.0.1 %d"):format(srv.port))
    assert.equal("hello\nworld\n", out)
    assert.equal(0, code)
  end)

  it("echoes a megabyte byte for byte", function()
    local srv = start("echo_server", "127.0.0.1", 0)
    local out, code = py(PY_BULK, "127.0.0.1", srv.port, 1024 * 1024)
    assert.equal("1048576 True\n", out)
    assert.equal(0, code)
  end)

  it("serves several clients at once", function()
    local srv = start("echo_server", "127.0.0.1", 0)
    local out, code = py([[
import socket, sys
port = int(sys.argv[1])
socks = [socket.create_connection(("127.0.0.1", port), timeout=8) for _ in range(5)]
for i, s in enumerate(socks): s.sendall(b"client %d\n" % i)
for i, s in reversed(list(enumerate(socks))):
    want = b"client %d\n" % i
    got = b""
    while len(got) < len(want): got += s.recv(100)
    print(got == want)
for s in socks: s.close()
]], srv.port)
    assert.equal(("True\n"):rep(5), out)
    assert.equal(0, code)
  end)

  it("logs each connection and disconnection on stdout", function()
    local srv = start("echo_server", "127.0.0.1", 0)
    run(("printf 'x' | nc -N 127.0.0.1 %d"):format(srv.port))
    -- Once nc has its reply and EOF, the server has logged both lines.
    stop(srv)
    assert.matches("connection from 127%.0%.0%.1:%d+", srv.stdout)
    assert.matches("127%.0%.0%.1:%d+ disconnected", srv.stdout)
  end)

  it("exits with status 1 and says why when the port is taken", function()
    local srv = start("echo_server", "127.0.0.1", 0)
    local out, err, code = run_example("echo_server", "127.0.0.1 " .. srv.port)
    assert.equal(1, code)
    assert.equal("", out)
    assert.matches("cannot listen on 127%.0%.0%.1:" .. srv.port, err)
    assert.matches("address already in use", err)
  end)

  it("exits with status 2 and a usage line on a bad port", function()
    local out, err, code = run_example("echo_server", "127.0.0.1 notaport")
    assert.equal(2, code)
    assert.equal("", out)
    assert.matches("usage: echo_server.lua", err, 1, true)
  end)
end)

describe("examples/echo_client.lua", function()
  it("sends each argument and prints each echoed reply", function()
    local srv = start("echo_server", "127.0.0.1", 0)
    local out, err, code = run_example("echo_client",
      quote_all("127.0.0.1", srv.port, "hello", "two words", "last"))
    assert.equal("", err)
    assert.equal("hello\ntwo words\nlast\n", out)
    assert.equal(0, code)
  end)

  it("sends the lines of stdin when given no messages", function()
    local srv = start("echo_server", "127.0.0.1", 0)
    local out, err, code = run_example("echo_client",
      quote_all("127.0.0.1", srv.port), "one\ntwo\nthree\n")
    assert.equal("", err)
    assert.equal("one\ntwo\nthree\n", out)
    assert.equal(0, code)
  end)

  it("exits with status 1 and says why when nobody listens", function()
    local port = closed_port()
    local out, err, code = run_example("echo_client",
      quote_all("127.0.0.1", port, "hello"))
    assert.equal(1, code)
    assert.equal("", out)
    assert.matches("cannot connect to 127%.0%.0%.1:" .. port .. ": connection refused", err)
  end)
end)

describe("examples/chat_server.lua", function()
  it("broadcasts each line to the other clients, with join, nick and leave notices", function()
    local srv = start("chat_server", "127.0.0.1", 0)
    local out, code = py([[
import socket, sys
port = int(sys.argv[1])
def connect():
    s = socket.create_connection(("127.0.0.1", port), timeout=8)
    return s, s.makefile("rb")
def name(s):
    return "127.0.0.1:%d" % s.getsockname()[1]
def line(f):
    return f.readline().decode().rstrip("\n")

a, fa = connect()
print("A1", line(fa) == "* welcome, you are %s (1 here)" % name(a))
b, fb = connect()
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
    local srv = start("chat_server", "127.0.0.1", 0)
    local out, code = py([[
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=8)
f = s.makefile("rb")
f.readline()                     # the welcome
s.sendall(b"alone here\n")
s.settimeout(0.3)
try:
    print(repr(s.recv(100)))
except socket.timeout:
    print("nothing")
s.close()
]], srv.port)
    assert.equal("nothing\n", out)
    assert.equal(0, code)
  end)

  it("logs joins and leaves on stdout", function()
    local srv = start("chat_server", "127.0.0.1", 0)
    local out = py([[
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=8)
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
    local srv = start("http_hello", "127.0.0.1", 0)
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
    local srv = start("http_hello", "127.0.0.1", 0)
    local out, code = py([[
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=8)
s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
got = b""
while True:
    b = s.recv(4096)
    if not b: break              # the server closed: EOF
    got += b
s.close()
sys.stdout.write(got.decode())
]], srv.port)
    assert.equal("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n" ..
      "Content-Length: 13\r\nConnection: close\r\n\r\nHello, World!", out)
    assert.equal(0, code)
  end)

  it("closes after an HTTP/1.0 request without keep-alive (curl --http1.0)", function()
    local srv = start("http_hello", "127.0.0.1", 0)
    local trace = run(("curl -sv --http1.0 http://127.0.0.1:%d/"):format(srv.port), true)
    assert.matches("< Connection: close", trace)
    assert.matches("Hello, World!", trace)
  end)

  it("answers pipelined requests in order, reading past request bodies", function()
    local srv = start("http_hello", "127.0.0.1", 0)
    local out, code = py([[
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=8)
s.sendall(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
          b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 27\r\n\r\n"
          b"GET /not-a-request HTTP/1.1"
          b"HEAD /c HTTP/1.1\r\nHost: x\r\n\r\n"
          b"GET /d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
got = b""
while True:
    b = s.recv(4096)
    if not b: break
    got += b
s.close()
print(got.count(b"HTTP/1.1 200 OK\r\n"), got.count(b"Hello, World!"),
      got.count(b"Connection: keep-alive"), got.count(b"Connection: close"))
]], srv.port)
    -- Four answers; HEAD has no body; the last one closes.
    assert.equal("4 3 3 1\n", out)
    assert.equal(0, code)
  end)

  it("carries request bodies sent by curl on a kept-alive connection", function()
    local srv = start("http_hello", "127.0.0.1", 0)
    local url = ("http://127.0.0.1:%d/"):format(srv.port)
    local trace = run(("curl -sv -d 'name=value' %s -d 'second=body' %s"):format(url, url), true)
    assert.matches("Re%-using existing connection", trace)
    local _, n = trace:gsub("Hello, World!", "")
    assert.equal(2, n)
  end)
end)

describe("examples/udp_echo.lua", function()
  it("sends each datagram back to its sender (python3)", function()
    local srv = start("udp_echo", "127.0.0.1", 0)
    assert.matches("listening on 127%.0%.0%.1:%d+", srv.banner)
    local out, code = py([[
import socket, sys
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
]], srv.port)
    assert.equal("True\nTrue\nTrue\n", out)
    assert.equal(0, code)
  end)

  it("echoes a datagram sent with socat", function()
    local srv = start("udp_echo", "127.0.0.1", 0)
    local out, code = run(("printf 'ping\\n' | socat -t 2 - UDP:127.0.0.1:%d"):format(srv.port))
    assert.equal("ping\n", out)
    assert.equal(0, code)
  end)

  it("exits with status 1 and says why when the port is taken", function()
    local srv = start("udp_echo", "127.0.0.1", 0)
    local out, err, code = run_example("udp_echo", "127.0.0.1 " .. srv.port)
    assert.equal(1, code)
    assert.equal("", out)
    assert.matches("cannot bind 127%.0%.0%.1:" .. srv.port .. ": address already in use", err)
  end)
end)

describe("examples/unix_echo.lua", function()
  it("echoes over its socket path (socat)", function()
    local path = H.tmppath("unix-echo")
    local srv = start("unix_echo", path)
    assert.matches("listening on " .. path, srv.banner, 1, true)
    local out, code = run(("printf 'over unix\\n' | socat - UNIX-CONNECT:%s"):format(H.q(path)))
    assert.equal("over unix\n", out)
    assert.equal(0, code)
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
import socket, sys
s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.close()]], path)
    assert.equal(0, pcode)
    assert.is_truthy(os.rename(path, path))
    start("unix_echo", path)
    local out = run(("printf 'fresh\\n' | socat - UNIX-CONNECT:%s"):format(H.q(path)))
    assert.equal("fresh\n", out)
  end)

  it("refuses to start when another server listens on the path", function()
    local path = H.tmppath("unix-echo")
    start("unix_echo", path)
    local out, err, code = run_example("unix_echo", H.q(path))
    assert.equal(1, code)
    assert.equal("", out)
    assert.matches("another server is already listening there", err, 1, true)
    -- and the first one still works
    assert.equal("still\n", (run(("printf 'still\\n' | socat - UNIX-CONNECT:%s"):format(H.q(path)))))
  end)

  it("leaves a regular file at the path alone", function()
    local path = H.tmppath("unix-echo")
    local f = assert(io.open(path, "w"))
    f:write("precious")
    f:close()
    local out, err, code = run_example("unix_echo", H.q(path))
    assert.equal(1, code)
    assert.equal("", out)
    assert.matches("not a socket", err, 1, true)
    assert.equal("precious", slurp(path))
    os.remove(path)
  end)

  it("listens in the abstract namespace with @name", function()
    local name = ("sockrun-spec-%d-abstract"):format(H.pid())
    local srv = start("unix_echo", "@" .. name)
    assert.matches("listening on @" .. name, srv.banner, 1, true)
    local out = run(("printf 'abstract\\n' | socat - ABSTRACT-CONNECT:%s"):format(name))
    assert.equal("abstract\n", out)
  end)
end)

describe("examples/tcp_proxy.lua", function()
  it("forwards a conversation to echo_server and back (nc)", function()
    local echo = start("echo_server", "127.0.0.1", 0)
    local proxy = start("tcp_proxy", 0, "127.0.0.1", echo.port)
    assert.matches("listening on 127%.0%.0%.1:%d+, forwarding to 127%.0%.0%.1:" .. echo.port,
      proxy.banner)
    local out, code = run(("printf 'through\\nthe proxy\\n' | nc -N 127.0.0.1 %d"):format(proxy.port))
    assert.equal("through\nthe proxy\n", out)
    assert.equal(0, code)
  end)

  it("passes a half-close on and copies a megabyte intact", function()
    local echo = start("echo_server", "127.0.0.1", 0)
    local proxy = start("tcp_proxy", 0, "127.0.0.1", echo.port)
    -- The reply ends only if the client's FIN reaches echo_server through the
    -- proxy and echo_server's FIN comes back the same way.
    local out, code = py(PY_BULK, "127.0.0.1", proxy.port, 1024 * 1024)
    assert.equal("1048576 True\n", out)
    assert.equal(0, code)
  end)

  it("keeps the reply direction open after the client half-closes", function()
    local http = start("http_hello", "127.0.0.1", 0)
    local proxy = start("tcp_proxy", 0, "127.0.0.1", http.port)
    local out, code = py(PY_SEND_EOF, "127.0.0.1", proxy.port,
      "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert.equal(0, code)
    assert.matches("^HTTP/1%.1 200 OK\r\n.*\r\n\r\nHello, World!$", out)
  end)

  it("serves several connections at once", function()
    local echo = start("echo_server", "127.0.0.1", 0)
    local proxy = start("tcp_proxy", 0, "127.0.0.1", echo.port)
    local out, code = py([[
import socket, sys
port = int(sys.argv[1])
socks = [socket.create_connection(("127.0.0.1", port), timeout=8) for _ in range(4)]
for i, s in enumerate(socks): s.sendall(b"conn %d\n" % i)
for i, s in reversed(list(enumerate(socks))):
    want = b"conn %d\n" % i
    got = b""
    while len(got) < len(want): got += s.recv(100)
    print(got == want)
for s in socks: s.close()
]], proxy.port)
    assert.equal(("True\n"):rep(4), out)
    assert.equal(0, code)
  end)

  it("carries an HTTP keep-alive connection to http_hello (curl)", function()
    local http = start("http_hello", "127.0.0.1", 0)
    local proxy = start("tcp_proxy", 0, "127.0.0.1", http.port)
    local url = ("http://127.0.0.1:%d/"):format(proxy.port)
    local trace = run(("curl -sv %s %s"):format(url, url), true)
    assert.matches("Re%-using existing connection", trace)
    local _, n = trace:gsub("Hello, World!", "")
    assert.equal(2, n)
  end)

  it("closes the client's connection when the target refuses", function()
    local port = closed_port()
    local proxy = start("tcp_proxy", 0, "127.0.0.1", port)
    local out, code = py([[
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=8)
print(repr(s.recv(100)))         # b'' : closed without a byte
s.close()
]], proxy.port)
    assert.equal("b''\n", out)
    assert.equal(0, code)
    stop(proxy)
    assert.matches("cannot reach 127%.0%.0%.1:" .. port .. ": connection refused", proxy.stdout)
  end)

  it("exits with status 2 and a usage line on a bad port", function()
    local out, err, code = run_example("tcp_proxy", "x 127.0.0.1 7000")
    assert.equal(2, code)
    assert.equal("", out)
    assert.matches("usage: tcp_proxy.lua", err, 1, true)
  end)
end)
