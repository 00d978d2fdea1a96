-- Sockets: sr.socket, options, bind/listen/accept/connect, addresses,
-- descriptors, tostring, close and its wake-ups, timeouts, and the
-- sr.connect / sr.listen / sr.resolve helpers. Real sockets on loopback;
-- straight-line code at top level (blocking calls drive the loop), and the
-- key cases again inside a task.
local H = require "helper"
local sr = H.sr

-- Helpers local to this file ---------------------------------------------

-- A raw listening TCP socket on host (default 127.0.0.1) and a free port.
local function listener(host, family, backlog)
  local s = assert(sr.socket(family or "inet", "stream"))
  assert(s:bind(host or "127.0.0.1", 0))
  assert(s:listen(backlog))
  local _, port = s:getsockname()
  return s, port
end

-- A test body: fn(s) on a fresh TCP socket, closed when fn returns.
local function on_socket(fn)
  return function()
    local s = assert(sr.socket("inet", "stream"))
    fn(s)
    s:close()
  end
end

-- The test "answers EBADF on a closed socket" for call(s), in the current
-- describe block.
local function it_answers_ebadf(call)
  it("answers EBADF on a closed socket", function()
    H.assert_closed(call(H.closed_socket()))
  end)
end

-- A listener whose backlog is full, so that the next connect hangs; the
-- sockets used to fill it come back to be closed. nil when the system
-- completes every connection (then a connect timeout cannot be provoked).
local full_listener = H.full_listener

local function close_all(list)
  for _, s in ipairs(list) do s:close() end
end

-- Step the loop until the live-socket count is at most n (bounded).
local function settle_to(n)
  for _ = 1, 200 do
    local nsock = sr._core.counts()
    if nsock <= n then return nsock end
    sr.step()
  end
  return (sr._core.counts())
end

after_each(H.run_deferred)
after_each(H.assert_clean)
-- A test that failed half-way must not leave its sockets to the next one.
after_each(H.collect)

-- ------------------------------------------------------------------------

describe("sr.socket", function()
  local domains = { "inet", "inet6", "unix" }
  local types = { "stream", "dgram" }

  it("creates every domain and type given by name", function()
    for _, d in ipairs(domains) do
      for _, t in ipairs(types) do
        local s = assert(sr.socket(d, t))
        local fam, kind = s:family()
        assert.equal(d, fam)
        assert.equal(t, kind)
        assert.is_true(s:fileno() > 2)
        assert.is_true(s:close())
      end
    end
  end)

  it("creates every domain and type given by constant", function()
    local dc = { inet = sr.AF_INET, inet6 = sr.AF_INET6, unix = sr.AF_UNIX }
    local tc = { stream = sr.SOCK_STREAM, dgram = sr.SOCK_DGRAM }
    for _, d in ipairs(domains) do
      for _, t in ipairs(types) do
        assert.is_number(dc[d])
        assert.is_number(tc[t])
        local s = assert(sr.socket(dc[d], tc[t]))
        local fam, kind = s:family()
        assert.equal(d, fam)
        assert.equal(t, kind)
        s:close()
      end
    end
  end)

  it("accepts the alias \"local\" and sr.AF_LOCAL for unix", function()
    assert.equal(sr.AF_UNIX, sr.AF_LOCAL)
    local a = assert(sr.socket("local", "stream"))
    local b = assert(sr.socket(sr.AF_LOCAL, "dgram"))
    assert.equal("unix", (a:family()))
    assert.equal("unix", (b:family()))
    a:close()
    b:close()
  end)

  it("accepts protocol 0", function()
    local s = assert(sr.socket("inet", "stream", 0))
    s:close()
  end)

  it("raises for an unknown domain name, naming argument 1", function()
    H.raises(function() return sr.socket("bogus", "stream") end,
      "bad argument #1 to 'socket'", "unknown domain")
  end)

  it("raises for an unknown domain number, naming argument 1", function()
    H.raises(function() return sr.socket(12345, "stream") end,
      "bad argument #1 to 'socket'", "unknown domain")
  end)

  it("raises for an unknown type name, naming argument 2", function()
    H.raises(function() return sr.socket("inet", "raw") end,
      "bad argument #2 to 'socket'", "unknown type")
  end)

  it("raises for an unknown type number, naming argument 2", function()
    H.raises(function() return sr.socket(sr.AF_INET, 12345) end,
      "bad argument #2 to 'socket'", "unknown type")
  end)

  it("raises for a missing type", function()
    H.raises(function() return sr.socket("inet") end,
      "bad argument #2 to 'socket'")
  end)

  it("takes the protocol of its type, and raises for another, naming argument 3",
    function()
      local s = assert(sr.socket("inet", "stream", sr.IPPROTO_TCP))
      s:close()
      H.raises(function() return sr.socket("inet", "stream", sr.IPPROTO_UDP) end,
        "bad argument #3 to 'socket'", "unsupported protocol")
      H.raises(function() return sr.socket("unix", "stream", sr.IPPROTO_TCP) end,
        "bad argument #3 to 'socket'", "unsupported protocol")
    end)

  it("works inside a task", function()
    H.in_task(function()
      local s = assert(sr.socket("inet6", "stream"))
      assert.equal("inet6", (s:family()))
      s:close()
    end)
  end)
end)

-- ------------------------------------------------------------------------

describe("s:setsockopt and s:getsockopt", function()
  local s
  before_each(function() s = assert(sr.socket("inet", "stream")) end)
  after_each(function() s:close() end)

  -- Turn the boolean option `name` of `sock` on and off, reading it back.
  local function check_boolean(sock, name)
    assert.is_true(sock:setsockopt(name, true))
    assert.is_true(sock:getsockopt(name))
    assert.is_true(sock:setsockopt(name, false))
    assert.is_false(sock:getsockopt(name))
  end

  for _, name in ipairs({ "reuseaddr", "reuseport", "nodelay" }) do
    it("sets and reads back the boolean option " .. name, function()
      check_boolean(s, name)
    end)
  end

  for _, opt in ipairs({ { "keepalive", 30 }, { "linger", 0 } }) do
    local name, seconds = opt[1], opt[2]
    it("sets " .. name .. " to a number of seconds and reads it back",
      function()
        assert.is_true(s:setsockopt(name, seconds))
        assert.equal(seconds, s:getsockopt(name))
      end)

    it("turns " .. name .. " off with false", function()
      assert.is_true(s:setsockopt(name, seconds))
      assert.is_true(s:setsockopt(name, false))
      assert.is_false(s:getsockopt(name))
    end)
  end

  for _, name in ipairs({ "rcvbuf", "sndbuf" }) do
    it("sets " .. name .. " and reads back at least that size", function()
      assert.is_true(s:setsockopt(name, 65536))
      local v = s:getsockopt(name)
      assert.equal("integer", math.type(v))
      assert.is_true(v >= 65536)
    end)

    it("raises for a non-positive " .. name, function()
      H.raises(function() return s:setsockopt(name, 0) end,
        "bad argument #2 to 'setsockopt'")
    end)
  end

  for _, case in ipairs({
    { "broadcast", "inet", "dgram", "a datagram socket" },
    { "ipv6only", "inet6", "stream", "an inet6 socket" },
  }) do
    local name, family, kind, what = table.unpack(case)
    it("sets " .. name .. " on " .. what, function()
      local other = assert(sr.socket(family, kind))
      check_boolean(other, name)
      other:close()
    end)
  end

  it("takes the raw form with level, option and an integer", function()
    assert.is_true(s:setsockopt(sr.SOL_SOCKET, sr.SO_REUSEADDR, 1))
    assert.is_true(s:getsockopt(sr.SOL_SOCKET, sr.SO_REUSEADDR) ~= 0)
    assert.is_true(s:setsockopt(sr.SOL_SOCKET, sr.SO_REUSEADDR, 0))
    assert.equal(0, s:getsockopt(sr.SOL_SOCKET, sr.SO_REUSEADDR))
    assert.equal(sr.SOCK_STREAM, s:getsockopt(sr.SOL_SOCKET, sr.SO_TYPE))
    assert.is_true(s:setsockopt(sr.IPPROTO_TCP, sr.TCP_NODELAY, 1))
    assert.is_true(s:getsockopt("nodelay"))
  end)

  it("returns nil, msg, code for an unknown raw option", function()
    H.assert_fail("ENOPROTOOPT", s:getsockopt(sr.SOL_SOCKET, 9999))
    H.assert_fail("ENOPROTOOPT", s:setsockopt(sr.SOL_SOCKET, 9999, 1))
  end)

  it("raises for an unknown option name", function()
    H.raises(function() return s:setsockopt("bogus", true) end,
      "bad argument #1 to 'setsockopt'", "unknown option")
    H.raises(function() return s:getsockopt("bogus") end,
      "bad argument #1 to 'getsockopt'", "unknown option")
  end)

  it("raises for a value a C int cannot hold, not truncating it", function()
    H.raises(function() return s:setsockopt("rcvbuf", 2 ^ 32 + 4096) end,
      "bad argument #2 to 'setsockopt'", "out of range")
    H.raises(function()
      return s:setsockopt(math.tointeger(2 ^ 32) + sr.SOL_SOCKET, sr.SO_REUSEADDR, 1)
    end, "bad argument #1 to 'setsockopt'", "out of range")
    H.raises(function()
      return s:setsockopt(sr.SOL_SOCKET, sr.SO_REUSEADDR, math.tointeger(2 ^ 32) + 1)
    end, "bad argument #3 to 'setsockopt'", "out of range")
    H.raises(function()
      return s:getsockopt(math.tointeger(2 ^ 32) + sr.IPPROTO_TCP, sr.TCP_NODELAY)
    end, "bad argument #1 to 'getsockopt'", "out of range")
    H.raises(function()
      return s:getsockopt(sr.SOL_SOCKET, math.tointeger(2 ^ 32) + sr.SO_TYPE)
    end, "bad argument #2 to 'getsockopt'", "out of range")
  end)

  it("refuses a keepalive idle time on a socket that is not TCP, setting nothing",
    function()
      for _, make in ipairs({
        function() return sr.socket("unix", "stream") end,
        function() return sr.udp() end,
      }) do
        local u = assert(make())
        H.assert_fail("ENOTSUP", u:setsockopt("keepalive", 10))
        assert.equal(0, u:getsockopt(sr.SOL_SOCKET, sr.SO_KEEPALIVE))
        assert.is_false(u:getsockopt("keepalive"))
        assert.is_true(u:setsockopt("keepalive", 0)) -- on, no idle time
        assert.equal(0, u:getsockopt("keepalive"))
        assert.is_true(u:setsockopt("keepalive", false))
        assert.is_false(u:getsockopt("keepalive"))
        u:close()
      end
    end)

  for _, case in ipairs({
    -- Linux takes TCP_KEEPIDLE up to 32767 s; a linger time would make
    -- close wait it out on the loop's thread
    { "keepalive", 40000, "32767", "an idle time Linux does not take" },
    { "linger", 5, "linger must be false or 0", "a time other than 0" },
  }) do
    local name, value, says, what = table.unpack(case)
    it("raises for " .. name .. " with " .. what .. ", leaving it off",
      function()
        H.raises(function() return s:setsockopt(name, value) end,
          "bad argument #2 to 'setsockopt'", says)
        assert.is_false(s:getsockopt(name))
      end)
  end

  it("raises for a value of the wrong type", function()
    for _, bad in ipairs({ { "nodelay", 1 }, { "reuseaddr", "yes" },
      { "rcvbuf", "big" }, { "keepalive", "often" }, { "linger", {} } }) do
      H.raises(function() return s:setsockopt(bad[1], bad[2]) end,
        "bad argument #2 to 'setsockopt'")
    end
  end)

  it("returns nil, msg, code for an option that does not apply", function()
    local u = assert(sr.socket("unix", "stream"))
    H.assert_fail(nil, u:setsockopt("nodelay", true))
    H.assert_fail(nil, u:getsockopt("nodelay"))
    u:close()
    H.assert_fail(nil, s:setsockopt("ipv6only", true)) -- on an inet socket
  end)

  it("answers EBADF on a closed socket", function()
    s:close()
    H.assert_closed(s:setsockopt("nodelay", true))
    H.assert_closed(s:getsockopt("nodelay"))
    H.assert_closed(s:setsockopt(sr.SOL_SOCKET, sr.SO_REUSEADDR, 1))
    H.assert_closed(s:getsockopt(sr.SOL_SOCKET, sr.SO_REUSEADDR))
  end)
end)

-- ------------------------------------------------------------------------

describe("s:bind", function()
  it("binds port 0 to a free port that getsockname reports",
    on_socket(function(s)
      assert.is_true(s:bind("127.0.0.1", 0))
      local host, port = s:getsockname()
      assert.equal("127.0.0.1", host)
      assert.equal("integer", math.type(port))
      assert.is_true(port > 0 and port < 65536)
    end))

  -- name; family, type, host to bind; the address getsockname then gives;
  -- port: whether to check the port too
  local binds = {
    { "binds \"*\" to the IPv4 any-address",
      "inet", "stream", "*", "0.0.0.0" },
    { "binds \"0.0.0.0\" to the IPv4 any-address",
      "inet", "dgram", "0.0.0.0", "0.0.0.0" },
    { "binds \"::\" to the IPv6 any-address",
      "inet6", "stream", "::", "::" },
    { "binds ::1 on an inet6 socket",
      "inet6", "stream", "::1", "::1", port = true },
    { "resolves \"localhost\"",
      "inet", "stream", "localhost", "127.0.0.1" },
  }
  for _, case in ipairs(binds) do
    local name, family, kind, host, want = table.unpack(case)
    it(name, function()
      local s = assert(sr.socket(family, kind))
      assert.is_true(s:bind(host, 0))
      local got, port = s:getsockname()
      assert.equal(want, got)
      if case.port then assert.is_true(port > 0) end
      s:close()
    end)
  end

  it("fails with EADDRINUSE when the port is taken by a listener", function()
    local l, port = listener()
    local s = assert(sr.socket("inet", "stream"))
    H.assert_fail("EADDRINUSE", s:bind("127.0.0.1", port))
    s:setsockopt("reuseaddr", true)
    H.assert_fail("EADDRINUSE", s:bind("127.0.0.1", port))
    s:close()
    l:close()
  end)

  it("returns nil, msg, code for a name that does not resolve",
    on_socket(function(s)
      H.assert_eai(s:bind("no-such-host.invalid", 0))
    end))

  it("raises for a malformed address, naming argument 1", on_socket(function(s)
    H.raises(function() return s:bind("bad host!", 0) end,
      "bad argument #1 to 'bind'", "malformed address")
    H.raises(function() return s:bind("999.1.1.1", 0) end,
      "bad argument #1 to 'bind'", "malformed")
  end))

  it("raises for an address of another family, naming argument 1",
    function()
      local s = assert(sr.socket("inet", "stream"))
      H.raises(function() return s:bind("::1", 0) end,
        "bad argument #1 to 'bind'")
      s:close()
    end)

  it("raises for a port out of range, naming argument 2", on_socket(function(s)
    H.raises(function() return s:bind("127.0.0.1", 70000) end,
      "bad argument #2 to 'bind'", "port out of range")
    H.raises(function() return s:bind("127.0.0.1", -1) end,
      "bad argument #2 to 'bind'", "port out of range")
    H.raises(function() return s:bind("127.0.0.1", 65536) end,
      "port out of range")
  end))

  it("raises for a port that is not an integer", on_socket(function(s)
    H.raises(function() return s:bind("127.0.0.1", 1.5) end,
      "bad argument #2 to 'bind'")
    H.raises(function() return s:bind("127.0.0.1", {}) end,
      "bad argument #2 to 'bind'")
    H.raises(function() return s:bind("127.0.0.1", "http") end,
      "bad argument #2 to 'bind'", 'got "http"')
  end))

  it("takes a port given as a float or a string with an integer value",
    on_socket(function(s)
      assert.is_true(s:bind("127.0.0.1", "0"))
      local other = assert(sr.socket("inet", "stream"))
      assert.is_true(other:bind("127.0.0.1", 0.0))
      other:close()
    end))

  it_answers_ebadf(function(s) return s:bind("127.0.0.1", 0) end)

  it("works inside a task", function()
    H.in_task(function()
      local s = assert(sr.socket("inet", "stream"))
      assert.is_true(s:bind("localhost", 0))
      assert.equal("127.0.0.1", (s:getsockname()))
      s:close()
    end)
  end)
end)

-- ------------------------------------------------------------------------

describe("s:listen", function()
  it("puts a bound socket in passive mode", on_socket(function(s)
    assert(s:bind("127.0.0.1", 0))
    assert.is_true(s:listen())
    local _, port = s:getsockname()
    assert.equal("sockrun.socket(tcp, 127.0.0.1:" .. port .. ", listening)",
      tostring(s))
  end))

  -- 2^40: beyond a C int, taken as the largest backlog (the kernel caps it)
  for _, backlog in ipairs({ 8, 2 ^ 40 }) do
    it("takes a backlog of " .. backlog, on_socket(function(s)
      assert(s:bind("127.0.0.1", 0))
      assert.is_true(s:listen(backlog))
      local _, port = s:getsockname()
      local c = assert(sr.connect("127.0.0.1", port))
      local a = assert(s:accept())
      a:close()
      c:close()
    end))
  end

  it("raises for a negative backlog", on_socket(function(s)
    assert(s:bind("127.0.0.1", 0))
    H.raises(function() return s:listen(-1) end, "bad argument #1 to 'listen'")
  end))

  it("returns nil, msg, code on a datagram socket", function()
    local u = assert(sr.socket("inet", "dgram"))
    H.assert_fail(nil, u:listen())
    u:close()
  end)

  it_answers_ebadf(function(s) return s:listen() end)
end)

-- ------------------------------------------------------------------------

describe("s:accept", function()
  it("returns the connection, the peer host and the peer port", function()
    local l, port = listener()
    local c = assert(sr.socket("inet", "stream"))
    assert(c:connect("127.0.0.1", port))
    local a, host, pport = l:accept()
    assert.is_userdata(a)
    assert.equal("127.0.0.1", host)
    local _, cport = c:getsockname()
    assert.equal(cport, pport)
    assert.matches("connected%)$", tostring(a))
    a:write("ping\n")
    assert.equal("ping", c:read("l"))
    a:close()
    c:close()
    l:close()
  end)

  it("accepts over IPv6", function()
    local l, port = listener("::1", "inet6")
    local c = assert(sr.connect("::1", port))
    local a, host, pport = l:accept()
    assert.is_userdata(a)
    assert.equal("::1", host)
    assert.equal(select(2, c:getsockname()), pport)
    a:close()
    c:close()
    l:close()
  end)

  it("times out with ETIMEDOUT and still works after", function()
    local l, port = listener()
    l:settimeout(0.05)
    H.assert_timeout(l:accept())
    local c = assert(sr.connect("127.0.0.1", port))
    local a = assert(l:accept())
    a:close()
    c:close()
    l:close()
  end)

  it("returns nil, msg, code on a socket that is not listening",
    on_socket(function(s)
      assert(s:bind("127.0.0.1", 0))
      H.assert_fail("EINVAL", s:accept())
    end))

  it("answers EBADF on a closed socket", function()
    local l = listener()
    l:close()
    H.assert_closed(l:accept())
  end)

  it("waits inside a task while the top level connects", function()
    local l, port = listener()
    local t = sr.spawn(function()
      l:settimeout(5)
      local a, host = l:accept()
      local line = a and a:read("l")
      if a then a:close() end
      return host, line
    end)
    assert.equal("waiting", t:status())
    local c = assert(sr.connect("127.0.0.1", port))
    c:write("from top\n")
    local host, line = t:join(5)
    assert.equal("127.0.0.1", host)
    assert.equal("from top", line)
    c:close()
    l:close()
  end)

  it("times out inside a task and still works after", function()
    H.in_task(function()
      local l, port = listener()
      l:settimeout(0.05)
      H.assert_fail("ETIMEDOUT", l:accept())
      local c = assert(sr.connect("127.0.0.1", port))
      local a = assert(l:accept())
      a:close()
      c:close()
      l:close()
    end)
  end)
end)

-- ------------------------------------------------------------------------

describe("reading and writing before connect", function()
  it("answer ENOTCONN and leave the socket to work once connected", function()
    local srv = assert(sr.listen("127.0.0.1", 0, function(c)
      c:write("hi\n")
      c:read("l")
    end))
    local _, port = srv:getsockname()
    local s = assert(sr.socket("inet", "stream"))
    s:settimeout(5)
    H.assert_fail("ENOTCONN", s:read("l"))
    H.assert_fail("ENOTCONN", s:write("early\n"))
    assert.is_true(s:connect("127.0.0.1", port))
    assert.equal("hi", s:read("l"))
    assert.equal(s, s:write("bye\n"))
    s:close()
    srv:close()
  end)
end)

describe("s:connect", function()
  it("connects to a listener and returns true", function()
    local l, port = listener()
    local c = assert(sr.socket("inet", "stream"))
    assert.is_true(c:connect("127.0.0.1", port))
    local host, pport = c:getpeername()
    assert.equal("127.0.0.1", host)
    assert.equal(port, pport)
    c:close()
    l:close()
  end)

  it("fails with ECONNREFUSED when nothing listens", function()
    local port = H.free_port()
    local c = assert(sr.socket("inet", "stream"))
    H.assert_fail_msg("connection refused", "ECONNREFUSED",
      c:connect("127.0.0.1", port))
    c:close()
  end)

  it("resolves names", function()
    local l, port = listener()
    local c = assert(sr.socket("inet", "stream"))
    assert.is_true(c:connect("localhost", port))
    assert.equal("127.0.0.1", (c:getpeername()))
    c:close()
    l:close()
  end)

  it("returns nil, msg, EAI_* for a name that does not resolve",
    on_socket(function(c)
      H.assert_eai(c:connect("no-such-host.invalid", 80))
    end))

  it("connects over IPv6", function()
    local l, port = listener("::1", "inet6")
    local c = assert(sr.socket("inet6", "stream"))
    assert.is_true(c:connect("::1", port))
    assert.equal("::1", (c:getpeername()))
    c:close()
    l:close()
  end)

  it("times out with ETIMEDOUT and leaves things sane", function()
    local l, port, fillers = full_listener()
    if not l then return pending("the system never fills a backlog") end
    local c = assert(sr.socket("inet", "stream"))
    c:settimeout(0.1)
    H.assert_timeout(c:connect("127.0.0.1", port))
    assert.is_true(c:close())
    close_all(fillers)
    l:close()
    -- the loop and fresh sockets still work
    local l2, port2 = listener()
    local c2 = assert(sr.connect("127.0.0.1", port2))
    local a2 = assert(l2:accept())
    c2:write("still fine\n")
    assert.equal("still fine", a2:read("l"))
    a2:close()
    c2:close()
    l2:close()
  end)

  it("raises for a malformed address or a port out of range",
    on_socket(function(c)
      H.raises(function() return c:connect("bad host!", 80) end,
        "bad argument #1 to 'connect'", "malformed address")
      H.raises(function() return c:connect("127.0.0.1", 70000) end,
        "bad argument #2 to 'connect'", "port out of range")
    end))

  it_answers_ebadf(function(s) return s:connect("127.0.0.1", 80) end)

  it("waits inside a task", function()
    local l, port = listener()
    H.in_task(function()
      local c = assert(sr.socket("inet", "stream"))
      assert.is_true(c:connect("localhost", port))
      local a = assert(l:accept())
      a:write("hello task\n")
      assert.equal("hello task", c:read("l"))
      a:close()
      c:close()
    end)
    l:close()
  end)

  it("gets ECONNREFUSED inside a task", function()
    local port = H.free_port()
    H.in_task(function()
      local c = assert(sr.socket("inet", "stream"))
      H.assert_fail("ECONNREFUSED", c:connect("127.0.0.1", port))
      c:close()
    end)
  end)
end)

-- ------------------------------------------------------------------------

describe("s:getsockname and s:getpeername", function()
  it("report both ends of a connection", function()
    local c, a = H.pair()
    local ch, cp = c:getsockname()
    local ah, ap = a:getpeername()
    assert.equal("127.0.0.1", ch)
    assert.equal(ch, ah)
    assert.equal(cp, ap)
    local ph, pp = c:getpeername()
    local sh, sp = a:getsockname()
    assert.equal(sh, ph)
    assert.equal(sp, pp)
    c:close()
    a:close()
  end)

  -- sockrun writes IPv4 addresses itself: every width of byte, and zero
  it("report an IPv4 peer whose bytes have one, two and three digits",
    function()
      local l, port = H.listener()
      for _, host in ipairs { "127.10.200.3", "127.255.0.99", "127.1.2.250" } do
        local c = assert(sr.socket("inet", "stream"))
        assert(c:bind(host, 0))
        assert(c:connect("127.0.0.1", port))
        local a, ahost, aport = assert(l:accept())
        assert.equal(host, ahost)
        assert.equal(select(2, c:getsockname()), aport)
        assert.equal(host, (a:getpeername()))
        assert.equal(host, (c:getsockname()))
        a:close()
        c:close()
      end
    end)

  it("getpeername fails with ENOTCONN on an unconnected socket",
    on_socket(function(s)
      H.assert_fail("ENOTCONN", s:getpeername())
      assert(s:bind("127.0.0.1", 0))
      assert(s:listen())
      H.assert_fail("ENOTCONN", s:getpeername())
    end))

  it("getsockname of an unbound socket is the any-address, port 0",
    on_socket(function(s)
      local host, port = s:getsockname()
      assert.equal("0.0.0.0", host)
      assert.equal(0, port)
    end))

  it("answer EBADF on a closed socket", function()
    local s = H.closed_socket()
    H.assert_closed(s:getsockname())
    H.assert_closed(s:getpeername())
  end)
end)

-- ------------------------------------------------------------------------

describe("s:fileno", function()
  it("returns the descriptor, an integer above 2", function()
    local s = assert(sr.socket("inet", "stream"))
    local fd = s:fileno()
    assert.equal("integer", math.type(fd))
    assert.is_true(fd > 2)
    local u = assert(sr.socket("unix", "dgram"))
    assert.is_true(u:fileno() > 2)
    assert.are_not.equal(fd, u:fileno())
    s:close()
    u:close()
  end)

  it_answers_ebadf(function(s) return s:fileno() end)
end)

-- ------------------------------------------------------------------------

describe("tostring(s)", function()
  it("shows a listening TCP socket", function()
    local l, port = listener()
    assert.equal("sockrun.socket(tcp, 127.0.0.1:" .. port .. ", listening)",
      tostring(l))
    l:close()
  end)

  it("shows a connected TCP socket", function()
    local c, a = H.pair()
    local _, port = c:getsockname()
    assert.equal("sockrun.socket(tcp, 127.0.0.1:" .. port .. ", connected)",
      tostring(c))
    c:close()
    a:close()
  end)

  it("shows an IPv6 socket with the address in brackets", function()
    local l, port = listener("::1", "inet6")
    assert.equal("sockrun.socket(tcp6, [::1]:" .. port .. ", listening)",
      tostring(l))
    l:close()
  end)

  it("shows a bound UDP socket", function()
    local u = assert(sr.udp("127.0.0.1", 0))
    local _, port = u:getsockname()
    assert.equal("sockrun.socket(udp, 127.0.0.1:" .. port .. ", open)",
      tostring(u))
    u:close()
  end)

  it("shows a unix listening socket with its path", function()
    local path = H.tmppath()
    local l = assert(sr.listen(path, function() end))
    assert.equal("sockrun.socket(unix, " .. path .. ", listening)",
      tostring(l))
    l:close()
  end)

  it("shows a closed socket", function()
    assert.equal("sockrun.socket(closed)", tostring(H.closed_socket()))
  end)
end)

-- ------------------------------------------------------------------------

describe("s:close", function()
  it("frees the socket at the next step, with nothing else for the loop",
    function()
      -- (a stream socket's handle may be kept for a later accept; its
      -- memory and count go at the loop's next turn all the same)
      for _, make in ipairs {
        function() return sr.socket("inet", "stream") end,
        function() return sr.socket("unix", "stream") end,
      } do
        local s = assert(make())
        s:close()
        sr.step()
        assert.equal(0, (sr._core.counts()))
      end
    end)

  it("returns true and is idempotent", function()
    local s = assert(sr.socket("inet", "stream"))
    assert.is_true(s:close())
    assert.is_true(s:close())
    assert.is_true(s:close())
  end)

  local calls = {
    { "setsockopt", function(s) return s:setsockopt("reuseaddr", true) end },
    { "getsockopt", function(s) return s:getsockopt("reuseaddr") end },
    { "bind", function(s) return s:bind("127.0.0.1", 0) end },
    { "listen", function(s) return s:listen() end },
    { "accept", function(s) return s:accept() end },
    { "connect", function(s) return s:connect("127.0.0.1", 9) end },
    { "read()", function(s) return s:read() end },
    { "read(\"l\")", function(s) return s:read("l") end },
    { "read(\"a\")", function(s) return s:read("a") end },
    { "read(n)", function(s) return s:read(10) end },
    { "write", function(s) return s:write("x") end },
    { "write with several strings", function(s) return s:write("x", "y") end },
    { "sendto", function(s) return s:sendto("x", "127.0.0.1", 9) end },
    { "sendto without address", function(s) return s:sendto("x") end },
    { "recvfrom", function(s) return s:recvfrom() end },
    { "shutdown", function(s) return s:shutdown() end },
    { "settimeout", function(s) return s:settimeout(1) end },
    { "settimeouts", function(s) return s:settimeouts(1, 1, 1) end },
    { "gettimeouts", function(s) return s:gettimeouts() end },
    { "setmaxline", function(s) return s:setmaxline(10) end },
    { "getsockname", function(s) return s:getsockname() end },
    { "getpeername", function(s) return s:getpeername() end },
    { "fileno", function(s) return s:fileno() end },
    { "family", function(s) return s:family() end },
  }
  for _, kind in ipairs({ "stream", "dgram" }) do
    for _, call in ipairs(calls) do
      it("makes " .. call[1] .. " on a closed " .. kind ..
        " socket answer nil, \"socket is closed\", \"EBADF\"", function()
          H.assert_closed(call[2](H.closed_socket("inet", kind)))
        end)
    end
  end

  it("makes the lines iterator of a closed socket end at once", function()
    assert.is_nil(H.closed_socket():lines()())
  end)

  it("makes a socket closed while connected answer EBADF", function()
    local c, a = H.pair()
    c:close()
    H.assert_closed(c:read("l"))
    H.assert_closed(c:write("late"))
    H.assert_closed(c:getpeername())
    a:close()
  end)

  it("wakes a task blocked in read with EBADF exactly once", function()
    local c, a = H.pair()
    local results = {}
    local t = sr.spawn(function()
      results[#results + 1] = table.pack(c:read("l"))
    end)
    assert.equal("waiting", t:status())
    assert.is_true(c:close())
    t:join(5)
    for _ = 1, 5 do sr.step() end
    assert.equal(1, #results)
    assert.equal(3, results[1].n)
    H.assert_closed(table.unpack(results[1], 1, 3))
    assert.equal("done", t:status())
    a:close()
  end)

  it("wakes a task blocked in accept with EBADF exactly once", function()
    local l = listener()
    local results = {}
    local t = sr.spawn(function()
      results[#results + 1] = table.pack(l:accept())
    end)
    assert.equal("waiting", t:status())
    l:close()
    t:join(5)
    for _ = 1, 5 do sr.step() end
    assert.equal(1, #results)
    H.assert_closed(table.unpack(results[1], 1, results[1].n))
  end)

  it("wakes the top level blocked in read when a task closes", function()
    local c, a = H.pair()
    local t = sr.spawn(function()
      sr.sleep(0.02)
      c:close()
    end)
    H.assert_closed(c:read("l"))
    t:join(5)
    a:close()
  end)

  it("closes at the end of a <close> variable's scope", function()
    local ref
    do
      local s <close> = assert(sr.socket("inet", "stream"))
      ref = s
      assert.is_true(s:fileno() > 2)
    end
    assert.equal("sockrun.socket(closed)", tostring(ref))
    H.assert_closed(ref:fileno())
  end)

  it("closes a forgotten socket when it is collected", function()
    assert.equal(0, settle_to(0))
    do
      local s = assert(sr.socket("inet", "stream"))
      assert(s:bind("127.0.0.1", 0))
      local u = assert(sr.socket("unix", "dgram")) -- luacheck: ignore
    end
    assert.equal(2, (sr._core.counts()))
    collectgarbage()
    collectgarbage()
    assert.equal(0, settle_to(0))
  end)

  it("flushes queued writes before the descriptor closes", function()
    local c, a = H.pair()
    local chunk = string.rep("z", 64 * 1024)
    for _ = 1, 16 do c:write(chunk) end
    c:close()
    local data = a:read("a")
    assert.equal(16 * #chunk, #data)
    a:close()
  end)

  -- Queue writes on c beyond what the kernel takes (its peer is not
  -- reading yet): the bytes written (a write that timed out has queued its
  -- data too). The flush then has the default 30 s.
  local function queue_writes(c)
    local chunk, sent = string.rep("z", 256 * 1024), 0
    c:settimeouts(nil, nil, 0.05)
    for _ = 1, 400 do
      local ok, _, code = c:write(chunk)
      sent = sent + #chunk
      if not ok then assert.equal("ETIMEDOUT", code) break end
    end
    c:settimeouts(nil, nil, nil)
    return sent
  end

  it("flushes to a peer that answers what it reads: the answers are " ..
     "read and dropped, so that the peer does not stall", function()
    local c, a = H.pair()
    local received, ended, answering = 0, nil, true
    local echo = sr.spawn(function()
      while true do
        local d, _, code = a:read()
        if not d then ended = code return end
        received = received + #d
        -- what it answers once c is gone meets a reset: it reads on
        answering = answering and a:write(d) ~= nil
      end
    end)
    -- c reads nothing: once the kernel's buffers both ways are full, the
    -- echo waits to write and stops reading, and c's writes queue up
    local sent = queue_writes(c)
    assert.is_true(c:close())
    assert.truthy(H.wait_for(function() return ended ~= nil end, 10),
      "the echo never saw the end of the stream")
    assert.equal(sent, received)
    assert.truthy(ended == "EOF" or ended == "ECONNRESET", ended)
    assert.truthy(H.wait_for(function() return sr._core.counts() == 1 end, 5))
    assert.equal("done", echo:status())
    a:close()
  end)

  it("sends a FIN after a flush and closes the descriptor when the peer " ..
     "closes", function()
    local c, a = H.pair()
    local sent = queue_writes(c)
    c:close()
    local data, _, code = a:read("a") -- all of it, then EOF: the FIN
    assert.equal(sent, #data, code)
    assert.equal(2, (sr._core.counts())) -- c lingers while a is open
    local t0 = sr.now()
    a:close()
    assert.truthy(H.wait_for(function() return sr._core.counts() == 0 end, 5))
    assert.is_true(sr.now() - t0 < 1, "c closed when a did, not 2 s later")
  end)

  it("with linger 0 resets once the queued writes have left, without a " ..
     "FIN or lingering", function()
    local c, a = H.pair()
    assert.is_true(c:setsockopt("linger", 0))
    local sent = queue_writes(c)
    c:close()
    local n, code = 0, nil
    repeat
      local d
      d, _, code = a:read()
      n = n + (d and #d or 0)
    until not d
    -- (the reset may drop what the kernel still held: the abort asked for)
    assert.equal("ECONNRESET", code)
    assert.is_true(n > 0 and n <= sent, n)
    assert.equal(1, (sr._core.counts()))
    a:close()
  end)

  it("closes a flushed socket whose peer stays open and quiet after 2 s",
    function()
      local c, a = H.pair()
      local sent = queue_writes(c)
      c:close()
      assert.equal(sent, #a:read("a"))
      local t0 = sr.now()
      assert.truthy(H.wait_for(function() return sr._core.counts() == 1 end, 6))
      local waited = sr.now() - t0
      assert.is_true(waited >= 1.5 and waited < 4, waited)
      a:close()
    end)

  it("gives a flush to a peer that does not read only the write timeout",
    function()
      local c, a = H.pair()
      c:settimeout(0.2)
      local chunk = string.rep("z", 256 * 1024)
      for _ = 1, 64 do -- the kernel's buffers, then the high-water mark
        if not c:write(chunk) then break end
      end
      local t0 = sr.now()
      c:close()
      -- the queue is dropped and the descriptor closed after 0.2 s, not
      -- after the 30 s a socket without a write timeout gets
      assert.truthy(H.wait_for(function() return sr._core.counts() == 1 end, 5))
      assert.is_true(sr.now() - t0 >= 0.15)
      a:close()
    end)

  -- a has read c's request line and answered; what c sent after the line
  -- is unread, and the answer is with a's kernel, not queued in sockrun
  local function answer_with_bytes_unread(kind)
    local c, a = H.pair(kind)
    assert(c:write("request\n", string.rep("b", 96 * 1024)))
    assert.equal("request", a:read("l"))
    assert.is_true(a:setsockopt("sndbuf", 1024 * 1024))
    local reply = string.rep("r", 512 * 1024)
    assert(a:write(reply))
    return c, a, reply
  end

  for _, kind in ipairs({ "tcp", "unix" }) do
    it("lingers when the peer's bytes are unread (" .. kind .. "): the " ..
       "peer reads the whole answer and EOF, not a reset that drops it",
      function()
        local c, a, reply = answer_with_bytes_unread(kind)
        assert.is_true(a:close())
        local data, msg, code = c:read("a")
        assert.equal(#reply, data and #data, code or msg)
        assert.equal(reply, data)
        c:close()
        assert.truthy(H.wait_for(function() return sr._core.counts() == 0 end, 5))
      end)
  end

  it("does not keep a script from ending while it lingers for bytes " ..
     "unread alone (its data is with the kernel already)", function()
    local t0 = sr.now()
    local out, err, code = H.run_script([[
      local sr = require "sockrun"
      local l = assert(sr.socket("inet", "stream"))
      assert(l:bind("127.0.0.1", 0))
      assert(l:listen())
      local c = assert(sr.socket("inet", "stream"))
      assert(c:connect("127.0.0.1", select(2, l:getsockname())))
      local a = assert(l:accept())
      assert(c:write("unread"))
      sr.sleep(0.05)
      a:close()
      print(select(3, sr._core.counts())) -- lingering: c is open and quiet
      PEER = c
    ]])
    assert.equal(0, code, err)
    assert.equal("1\n", out)
    assert.is_true(sr.now() - t0 < 1.5, "it waited for the quiet peer")
  end)

  it("resets a peer that sends another MiB after a close with its bytes " ..
     "unread: it is not reading what we sent", function()
    local c, a = answer_with_bytes_unread("tcp")
    local t0 = sr.now()
    assert.is_true(a:close())
    local chunk, sent, code = string.rep("x", 64 * 1024), 0, nil
    for _ = 1, 1024 do -- 64 MiB at most
      local ok
      ok, _, code = c:write(chunk)
      if not ok then break end
      sent = sent + #chunk
    end
    assert.truthy(code == "ECONNRESET" or code == "EPIPE", code)
    assert.is_true(sent < 64 * 1024 * 1024, sent)
    assert.truthy(H.wait_for(function() return sr._core.counts() == 1 end, 5))
    assert.is_true(sr.now() - t0 < 5)
    c:close()
  end)
end)

-- ------------------------------------------------------------------------

describe("s:settimeout and s:settimeouts", function()
  it("bounds a read with ETIMEDOUT and the socket stays usable", function()
    local c, a = H.pair()
    assert.is_true(c:settimeout(0.05))
    H.assert_timeout(c:read("l"))
    a:write("later\n")
    assert.equal("later", c:read("l"))
    c:write("back\n")
    assert.equal("back", a:read("l"))
    c:close()
    a:close()
  end)

  it("keeps partial line data across a timeout", function()
    local c, a = H.pair()
    c:settimeout(0.05)
    a:write("hal")
    H.assert_fail("ETIMEDOUT", c:read("l"))
    a:write("f\n")
    assert.equal("half", c:read("l"))
    c:close()
    a:close()
  end)

  it("sets the three timeouts apart", on_socket(function(s)
    assert.is_true(s:settimeouts(1, 2.5, nil))
    local ct, rt, wt = s:gettimeouts()
    assert.equal(1, ct)
    assert.equal(2.5, rt)
    assert.is_nil(wt)
    assert.is_true(s:settimeout(nil))
    ct, rt, wt = s:gettimeouts()
    assert.is_nil(ct)
    assert.is_nil(rt)
    assert.is_nil(wt)
    assert.is_true(s:settimeout(3))
    assert.same({ 3, 3, 3 }, { s:gettimeouts() })
  end))

  it("keeps timeouts in whole milliseconds, up to 49 days", on_socket(function(s)
    assert.is_true(s:settimeouts(0.0014, 0.0016, 1e12))
    local ct, rt, wt = s:gettimeouts()
    assert.equal(0.001, ct)
    assert.equal(0.002, rt)
    assert.is_true(wt > 49 * 86400 and wt < 50 * 86400)
  end))

  it("applies only the read timeout of settimeouts to reads", function()
    local c, a = H.pair()
    c:settimeouts(nil, 0.05, nil)
    H.assert_fail("ETIMEDOUT", c:read(1))
    a:write("x")
    assert.equal("x", c:read(1))
    c:close()
    a:close()
  end)

  it("raises for a negative timeout", on_socket(function(s)
    H.raises(function() return s:settimeout(-1) end,
      "bad argument #1 to 'settimeout'")
    H.raises(function() return s:settimeouts(1, -1, 1) end,
      "bad argument #2 to 'settimeouts'")
    H.raises(function() return s:settimeout("soon") end,
      "bad argument #1 to 'settimeout'")
  end))

  it("bounds a read inside a task and the socket stays usable", function()
    local c, a = H.pair()
    H.in_task(function()
      c:settimeout(0.05)
      H.assert_fail("ETIMEDOUT", c:read())
      a:write("ok")
      assert.equal("ok", c:read())
    end)
    c:close()
    a:close()
  end)
end)

-- ------------------------------------------------------------------------

describe("sr.listen and sr.connect", function()
  -- sr.listen on host with the echo handler (and opts), sr.connect to it,
  -- and a line there and back.
  local function echo_line(host, line, opts)
    local srv = assert(sr.listen(host, 0, H.echo, opts))
    local _, port = srv:getsockname()
    local c = assert(sr.connect(host, port))
    assert.equal(line, c:write(line .. "\n"):read("l"))
    c:close()
    srv:close()
  end

  it("serve and connect over IPv4", function()
    echo_line("127.0.0.1", "hello")
  end)

  it("take the port as a string, as arg[] gives it", function()
    local srv = assert(sr.listen("127.0.0.1", "0", H.echo))
    local port = tostring(select(2, srv:getsockname()))
    local c = assert(sr.connect("127.0.0.1", port))
    assert.equal("s", c:write("s\n"):read("l"))
    c:close()
    srv:close()
    H.raises(function() return sr.connect("127.0.0.1", "80.5") end,
      "bad argument #2 to 'connect'", "port must be an integer")
    H.raises(function() return sr.listen("127.0.0.1", "8080", "handler") end,
      "bad argument #3 to 'listen'", "function expected")
  end)

  it("serve and connect over IPv6 ::1", function()
    local srv = assert(sr.listen("::1", 0, H.echo))
    local host, port = srv:getsockname()
    assert.equal("::1", host)
    local c = assert(sr.connect("::1", port))
    assert.equal("inet6", (c:family()))
    assert.equal("six", c:write("six\n"):read("l"))
    c:close()
    srv:close()
  end)

  it("resolve names", function()
    echo_line("localhost", "named")
  end)

  it("pass the peer host and port to the handler", function()
    local seen = {}
    local srv = assert(sr.listen("127.0.0.1", 0, function(conn, host, port)
      seen.host, seen.port = host, port
      conn:write("hi\n")
    end))
    local _, port = srv:getsockname()
    local c = assert(sr.connect("127.0.0.1", port))
    assert.equal("hi", c:read("l"))
    assert.equal("127.0.0.1", seen.host)
    assert.equal(select(2, c:getsockname()), seen.port)
    c:close()
    srv:close()
  end)

  it("close the connection when the handler returns", function()
    local srv = assert(sr.listen("127.0.0.1", 0, function(conn)
      conn:write("bye\n")
    end))
    local _, port = srv:getsockname()
    local c = assert(sr.connect("127.0.0.1", port))
    assert.equal("bye", c:read("l"))
    H.assert_eof(c:read("l"))
    c:close()
    srv:close()
  end)

  it("close the connection when the handler fails and keep serving",
    function()
      H.quiet_errors()
      local srv = assert(sr.listen("127.0.0.1", 0, function(conn)
        local line = conn:read("l")
        if line == "fail" then error("handler failed on purpose") end
        conn:write("ok\n")
      end))
      local _, port = srv:getsockname()
      local c1 = assert(sr.connect("127.0.0.1", port))
      c1:write("fail\n")
      H.assert_fail("EOF", c1:read("l"))
      local c2 = assert(sr.connect("127.0.0.1", port))
      assert.equal("ok", c2:write("good\n"):read("l"))
      c1:close()
      c2:close()
      srv:close()
    end)

  it("keep the connection open while the handler runs, though it keeps " ..
     "no reference to it", function()
    local srv = assert(sr.listen("127.0.0.1", 0, function(conn)
      conn:write("hi\n")
      conn = nil -- luacheck: ignore (the point of the test)
      sr.sleep(0.05) -- (sr.listen's accept loop has let go of it too)
      collectgarbage()
      collectgarbage()
      sr.sleep(0.2)
    end))
    local _, port = srv:getsockname()
    local c = assert(sr.connect("127.0.0.1", port))
    assert.equal("hi", c:read("l"))
    c:settimeout(0.1)
    H.assert_fail("ETIMEDOUT", c:read("l")) -- open, not EOF
    c:settimeout(5)
    H.assert_eof(c:read("l"))
    c:close()
    srv:close()
  end)

  it("close the connection when the handler's task is cancelled, after " ..
     "the handler's own <close> variables", function()
    local task
    local srv = assert(sr.listen("127.0.0.1", 0, function(conn)
      task = sr.current()
      local _ <close> = setmetatable({}, { __close = function()
        conn:write("last words\n")
      end })
      conn:read("l") -- waits until cancelled
    end))
    local _, port = srv:getsockname()
    local c = assert(sr.connect("127.0.0.1", port))
    c:settimeout(5)
    assert(H.wait_for(function() return task ~= nil end))
    assert.equal("waiting", task:status())
    assert.is_true(task:cancel())
    assert.equal("cancelled", task:status())
    assert.equal("last words", c:read("l"))
    H.assert_eof(c:read("l"))
    c:close()
    srv:close()
  end)

  it("give a handler's results to task:join, and only those", function()
    local task
    local srv = assert(sr.listen("127.0.0.1", 0, function(conn)
      task = sr.current()
      conn:read("l")
      return "r1", "r2"
    end))
    local _, port = srv:getsockname()
    local c = assert(sr.connect("127.0.0.1", port))
    c:write("go\n")
    assert(H.wait_for(function() return task ~= nil end))
    assert.same({ "r1", "r2" }, { task:join(5) })
    c:close()
    srv:close()
  end)

  it("survive a script closing the handler's coroutine behind its back",
     function()
    local task, co
    local srv = assert(sr.listen("127.0.0.1", 0, function(conn)
      task, co = sr.current(), coroutine.running()
      conn:read("l")
    end))
    local _, port = srv:getsockname()
    local c = assert(sr.connect("127.0.0.1", port))
    c:settimeout(5)
    assert(H.wait_for(function() return co ~= nil end))
    assert.is_true(coroutine.close(co))
    collectgarbage() -- nothing of the handler's holds its connection now
    collectgarbage()
    assert.is_true(task:cancel())
    H.assert_eof(c:read("l"))
    c:close()
    srv:close()
  end)

  it("close a failed handler's connection before sr.onerror sees the " ..
     "failure", function()
    local conn_in_hook
    local saved
    H.quiet_errors(function() conn_in_hook = tostring(saved) end)
    local srv = assert(sr.listen("127.0.0.1", 0, function(conn)
      saved = conn
      local _ <close> = setmetatable({}, { __close = function()
        conn:write("500\n")
      end })
      conn:read("l")
      error("handler failed on purpose")
    end))
    local _, port = srv:getsockname()
    local c = assert(sr.connect("127.0.0.1", port))
    c:settimeout(5)
    c:write("go\n")
    assert.equal("500", c:read("l"))
    H.assert_eof(c:read("l"))
    assert.equal("sockrun.socket(closed)", conn_in_hook)
    c:close()
    srv:close()
  end)

  it("take opts.backlog", function()
    echo_line("127.0.0.1", "b", { backlog = 4 })
  end)

  it("raise for a negative backlog and leave no socket open", function()
    H.raises(function()
      return sr.listen("127.0.0.1", 0, H.echo, { backlog = -1 })
    end, "backlog")
    assert.equal(0, settle_to(0))
  end)

  it("share a port with opts.reuseport", function()
    local a = assert(sr.listen("127.0.0.1", 0, H.echo, { reuseport = true }))
    local _, port = a:getsockname()
    assert.is_true(a:getsockopt("reuseport"))
    local b = assert(sr.listen("127.0.0.1", port, H.echo, { reuseport = true }))
    local c = assert(sr.connect("127.0.0.1", port))
    assert.equal("r", c:write("r\n"):read("l"))
    c:close()
    a:close()
    b:close()
  end)

  it("honour opts.ipv6only", function()
    local only = assert(sr.listen("::", 0, H.echo, { ipv6only = true }))
    assert.is_true(only:getsockopt("ipv6only"))
    local _, p1 = only:getsockname()
    H.assert_fail("ECONNREFUSED", sr.connect("127.0.0.1", p1))
    local c6 = assert(sr.connect("::1", p1))
    c6:close()
    only:close()
    local dual = assert(sr.listen("::", 0, H.echo, { ipv6only = false }))
    assert.is_false(dual:getsockopt("ipv6only"))
    local _, p2 = dual:getsockname()
    local c4 = assert(sr.connect("127.0.0.1", p2))
    assert.equal("dual", c4:write("dual\n"):read("l"))
    c4:close()
    dual:close()
  end)

  it("sr.listen returns nil, msg, EADDRINUSE on a taken port", function()
    local a = assert(sr.listen("127.0.0.1", 0, H.echo))
    local _, port = a:getsockname()
    H.assert_fail_msg("address already in use", "EADDRINUSE",
      sr.listen("127.0.0.1", port, H.echo))
    a:close()
  end)

  it("sr.listen raises for a handler that is not a function", function()
    H.raises(function() return sr.listen("127.0.0.1", 0, "echo") end,
      "bad argument #3 to 'listen'")
    H.raises(function() return sr.listen("127.0.0.1", 0) end,
      "bad argument #3 to 'listen'")
    H.raises(function() return sr.listen(H.tmppath(), "echo") end,
      "bad argument #2 to 'listen'")
  end)

  it("sr.listen raises for a bad port or address", function()
    H.raises(function() return sr.listen("127.0.0.1", 70000, H.echo) end,
      "bad argument #2 to 'listen'", "port out of range")
    H.raises(function() return sr.listen("no way!", 0, H.echo) end,
      "bad argument #1 to 'listen'", "malformed address")
    H.raises(function() return sr.listen("127.0.0.1", 0, H.echo, "opts") end,
      "bad argument #4 to 'listen'")
  end)

  it("sr.connect fails with ECONNREFUSED when nothing listens", function()
    H.assert_fail_msg("connection refused", "ECONNREFUSED",
      sr.connect("127.0.0.1", H.free_port()))
  end)

  it("sr.connect returns nil, msg, EAI_* for an unknown name", function()
    H.assert_eai(sr.connect("no-such-host.invalid", 80))
  end)

  it("goes on waiting for the same attempt when called again after a " ..
     "timeout", function()
    local l, port = full_listener()
    if not l then return pending("the system never fills a backlog") end
    local c = assert(sr.socket("inet", "stream"))
    H.defer(function() c:close() end)
    c:settimeout(0.1)
    H.assert_timeout(c:connect("127.0.0.1", port))
    -- room in the backlog for every attempt still pending (c's and the
    -- last filler's): the kernel completes them as their SYNs come again,
    -- and a task accepts each as it lands (until the listener closes)
    sr.spawn(function()
      while true do
        local a = l:accept()
        if not a then return end
        H.defer(function() a:close() end)
      end
    end)
    c:settimeout(5)
    assert.is_true(c:connect("127.0.0.1", port))
    H.assert_fail("EISCONN", c:connect("127.0.0.1", port))
  end)

  it("sr.connect times out with opts.timeout", function()
    local l, port, fillers = full_listener()
    if not l then return pending("the system never fills a backlog") end
    H.assert_timeout(sr.connect("127.0.0.1", port, { timeout = 0.1 }))
    close_all(fillers)
    l:close()
  end)

  it("sr.connect raises for a bad port, address or opts", function()
    H.raises(function() return sr.connect("127.0.0.1", 70000) end,
      "bad argument #2 to 'connect'", "port out of range")
    H.raises(function() return sr.connect("no way!", 80) end,
      "bad argument #1 to 'connect'", "malformed address")
    H.raises(function() return sr.connect("127.0.0.1", 80, 5) end,
      "bad argument #3 to 'connect'")
    H.raises(function() return sr.connect(42) end,
      "bad argument #1 to 'connect'")
    H.raises(function() return sr.connect("127.0.0.1", 80, { timeout = 0 / 0 }) end,
      "bad argument #3 to 'connect'", "opts.timeout")
  end)

  it("sr.connect raises for a numeric host with a zero byte inside", function()
    -- C would read only "127.0.0.1" and connect there
    for _, host in ipairs({ "127.0.0.1\0.example.com", "::1\0junk" }) do
      H.raises(function() return sr.connect(host, 80) end,
        "bad argument #1 to 'connect'", "malformed address")
    end
    local u = assert(sr.udp("::1", 0))
    H.raises(function() return u:sendto("x", "::1\0junk", 9) end,
      "bad argument #2 to 'sendto'", "malformed address")
    u:close()
  end)

  it("takes an IPv6 zone by interface name or index, and refuses an unknown one",
    function()
      local srv = assert(sr.listen("::1", 0, H.echo))
      local _, port = srv:getsockname()
      for _, host in ipairs({ "::1%lo", "::1%1" }) do
        local c = assert(sr.connect(host, port))
        assert.equal("zone", c:write("zone\n"):read("l"))
        c:close()
      end
      for _, host in ipairs({ "::1%no-such-if", "::1%0", "::1%" }) do
        H.raises(function() return sr.connect(host, port) end,
          "bad argument #1 to 'connect'", "malformed address")
      end
      srv:close()
    end)

  it("work inside a task", function()
    H.in_task(function()
      local srv = assert(sr.listen("127.0.0.1", 0, H.echo))
      local _, port = srv:getsockname()
      local c = assert(sr.connect("localhost", port))
      assert.equal("in task", c:write("in task\n"):read("l"))
      H.assert_fail("ECONNREFUSED", sr.connect("127.0.0.1", H.free_port()))
      c:close()
      srv:close()
    end)
  end)
end)

-- ------------------------------------------------------------------------

describe("sr.resolve", function()
  local function check_list(list)
    assert.is_table(list)
    for _, a in ipairs(list) do
      assert.is_true(a.family == "inet" or a.family == "inet6")
      assert.is_string(a.addr)
    end
  end

  local function has(list, addr)
    for _, a in ipairs(list) do if a.addr == addr then return true end end
    return false
  end

  it("gives 127.0.0.1 and/or ::1 for localhost", function()
    local list = assert(sr.resolve("localhost"))
    check_list(list)
    assert.is_true(#list >= 1)
    assert.is_true(has(list, "127.0.0.1") or has(list, "::1"))
    for _, a in ipairs(list) do
      assert.equal(a.addr == "::1" and "inet6" or "inet", a.family)
    end
  end)

  it("filters by family", function()
    local v4 = assert(sr.resolve("localhost", "inet"))
    check_list(v4)
    assert.is_true(has(v4, "127.0.0.1"))
    for _, a in ipairs(v4) do assert.equal("inet", a.family) end
    local v6, _, code = sr.resolve("localhost", "inet6")
    if v6 then
      for _, a in ipairs(v6) do assert.equal("inet6", a.family) end
    else
      assert.matches("^EAI_", code)
    end
    local any = assert(sr.resolve("localhost", "any"))
    assert.is_true(#any >= #v4)
  end)

  it("passes numeric addresses through", function()
    assert.same({ { family = "inet", addr = "127.0.0.1" } },
      sr.resolve("127.0.0.1"))
    assert.same({ { family = "inet6", addr = "::1" } },
      sr.resolve("::1", "inet6"))
  end)

  it("returns nil, msg, EAI_* for a numeric address of the wrong family",
    function()
      H.assert_eai(sr.resolve("127.0.0.1", "inet6"))
    end)

  it("returns nil, msg, EAI_* for a name that does not exist", function()
    H.assert_eai(sr.resolve("no-such-host.invalid"))
  end)

  it("raises for an unknown family or an empty host", function()
    H.raises(function() return sr.resolve("localhost", "ipx") end,
      "bad argument #2 to 'resolve'")
    H.raises(function() return sr.resolve("") end,
      "bad argument #1 to 'resolve'")
    H.raises(function() return sr.resolve() end,
      "bad argument #1 to 'resolve'")
  end)

  it("times out cleanly, also when the answer comes in the same turn of the loop",
    function()
      -- A timeout of 0 fires in the first turn of the loop, before it
      -- polls; a numeric address is looked up at once on the thread pool,
      -- so its answer often comes in that same turn, after the wait gave
      -- the request up.
      for _ = 1, 300 do
        H.assert_fail("ETIMEDOUT", sr.resolve("127.0.0.1", "inet", 0))
      end
      assert.same({ { family = "inet", addr = "127.0.0.1" } },
        sr.resolve("127.0.0.1", "inet", 5))
    end)

  -- The two below leak the lookup's memory if it is lost: LeakSanitizer
  -- (make sanitize) fails the run then.
  it("ends a task whose coroutine the script closed while it resolved", function()
    local co
    local t = sr.spawn(function()
      co = coroutine.running()
      sr.resolve("localhost")
    end)
    assert.is_true(coroutine.close(co))
    assert.is_true(H.wait_for(function() return t:status() == "cancelled" end))
  end)

  it("lets the binary exit 0 with a lookup still waited for", function()
    H.assert_exit(0, H.run_script([[
      local sr = require "sockrun"
      sr.spawn(function() sr.resolve("localhost") end)
      sr.stop()
    ]]))
  end)

  it("works inside a task", function()
    H.in_task(function()
      local list = assert(sr.resolve("localhost", "inet"))
      assert.is_true(has(list, "127.0.0.1"))
      local none, _, code = sr.resolve("no-such-host.invalid")
      assert.is_nil(none)
      assert.matches("^EAI_", code)
    end)
  end)
end)
