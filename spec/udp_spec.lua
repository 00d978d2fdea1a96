-- UDP: sr.udp, s:sendto / s:recvfrom over IPv4 and IPv6, connected
-- datagram sockets (connect, write, read, sendto without an address),
-- timeouts and error shapes. Real sockets on 127.0.0.1 and ::1.
local H = require "helper"
local sr = H.sr

-- Helpers local to this file ---------------------------------------------

-- A bound UDP socket on host (default 127.0.0.1) with a free port and a
-- timeout, so that a lost datagram fails the test instead of hanging it.
local function udp(host)
  local s = assert(sr.udp(host or "127.0.0.1", 0))
  s:settimeout(5)
  local _, port = s:getsockname()
  return s, port
end

-- udp("::1")
local function udp6() return udp("::1") end

after_each(H.run_deferred)
after_each(H.assert_clean)
-- A test that failed half-way must not leave its sockets to the next one.
after_each(H.collect)

-- ------------------------------------------------------------------------

describe("sr.udp", function()
  it("makes an unbound IPv4 datagram socket without arguments", function()
    local s = assert(sr.udp())
    local fam, kind = s:family()
    assert.equal("inet", fam)
    assert.equal("dgram", kind)
    s:close()
  end)

  it("binds to a host and a free port", function()
    local s = assert(sr.udp("127.0.0.1", 0))
    local host, port = s:getsockname()
    assert.equal("127.0.0.1", host)
    assert.is_true(port > 0)
    s:close()
  end)

  it("binds an IPv6 socket to ::1", function()
    local s = assert(sr.udp("::1", 0))
    assert.equal("inet6", (s:family()))
    assert.equal("::1", (s:getsockname()))
    s:close()
  end)

  it("binds \"*\" to the any-address", function()
    local s = assert(sr.udp("*", 0))
    assert.equal("0.0.0.0", (s:getsockname()))
    s:close()
  end)

  it("resolves a name to bind", function()
    local s = assert(sr.udp("localhost", 0))
    local host = s:getsockname()
    assert.is_true(host == "127.0.0.1" or host == "::1")
    s:close()
  end)

  it("returns nil, msg, EADDRINUSE for a taken port", function()
    local a, port = udp()
    H.assert_fail("EADDRINUSE", sr.udp("127.0.0.1", port))
    a:close()
  end)

  it("returns nil, msg, EAI_* for a name that does not resolve", function()
    H.assert_eai(sr.udp("no-such-host.invalid", 0))
  end)

  it("raises for a port out of range or a malformed address", function()
    H.raises(function() return sr.udp("127.0.0.1", 70000) end,
      "bad argument #2 to 'udp'", "port out of range")
    H.raises(function() return sr.udp("127.0.0.1") end,
      "bad argument #2 to 'udp'")
    H.raises(function() return sr.udp("not an address!", 0) end,
      "bad argument #1 to 'udp'", "malformed address")
  end)
end)

-- ------------------------------------------------------------------------

describe("s:sendto and s:recvfrom", function()
  it("carry a datagram over IPv4 with the sender's address",
    H.on_two(udp, function(a, aport, b, bport)
      assert.is_true(a:sendto("hello", "127.0.0.1", bport))
      local data, host, port = b:recvfrom()
      assert.equal("hello", data)
      assert.equal("127.0.0.1", host)
      assert.equal(aport, port)
      assert.is_true(b:sendto("back", host, port))
      assert.same({ "back", "127.0.0.1", bport }, { a:recvfrom() })
    end))

  it("carry a datagram over IPv6", H.on_two(udp6, function(a, aport, b, bport)
    assert.is_true(a:sendto("six", "::1", bport))
    local data, host, port = b:recvfrom()
    assert.equal("six", data)
    assert.equal("::1", host)
    assert.equal(aport, port)
  end))

  it("send from an unbound socket, which gets a port", function()
    local s = assert(sr.udp())
    local b, bport = udp()
    assert.is_true(s:sendto("auto", "127.0.0.1", bport))
    local data, _, port = b:recvfrom()
    assert.equal("auto", data)
    assert.equal(select(2, s:getsockname()), port)
    s:close()
    b:close()
  end)

  it("keep datagram boundaries and order",
    H.on_two(udp, function(a, aport, b, bport)
      for i = 1, 20 do assert(a:sendto("msg" .. i, "127.0.0.1", bport)) end
      for i = 1, 20 do assert.equal("msg" .. i, (b:recvfrom())) end
    end))

  it("carry an empty datagram", H.on_two(udp, function(a, aport, b, bport)
    assert.is_true(a:sendto("", "127.0.0.1", bport))
    assert.equal("", (b:recvfrom()))
  end))

  it("carry a large datagram intact", H.on_two(udp, function(a, aport, b, bport)
    b:setsockopt("rcvbuf", 256 * 1024)
    local big = {}
    for i = 1, 6000 do big[i] = string.format("%9d\n", i) end
    big = table.concat(big) -- 60000 bytes
    assert.is_true(a:sendto(big, "127.0.0.1", bport))
    local data = b:recvfrom()
    assert.equal(#big, #data)
    assert.is_true(data == big)
  end))

  it("send to a name", H.on_two(udp, function(a, aport, b, bport)
    assert.is_true(a:sendto("named", "localhost", bport))
    assert.equal("named", (b:recvfrom()))
  end))

  it("return nil, msg, EAI_* when sending to a name that does not resolve",
    function()
      local a = udp()
      H.assert_eai(a:sendto("x", "no-such-host.invalid", 9))
      a:close()
    end)

  it("time out in recvfrom with ETIMEDOUT and still work after",
    H.on_two(udp, function(a, aport, b, bport)
      b:settimeout(0.05)
      H.assert_timeout(b:recvfrom())
      a:sendto("after", "127.0.0.1", bport)
      assert.equal("after", (b:recvfrom()))
    end))

  it("raise for a malformed address", function()
    local a = udp()
    H.raises(function() return a:sendto("x", "bad address!", 9) end,
      "bad argument #2 to 'sendto'", "malformed address")
    H.raises(function() return a:sendto("x", "300.1.1.1", 9) end,
      "bad argument #2 to 'sendto'", "malformed")
    H.raises(function() return a:sendto("x", "::1", 9) end,
      "bad argument #2 to 'sendto'") -- another family than the socket's
    a:close()
  end)

  it("raise for a port out of range or missing", function()
    local a = udp()
    H.raises(function() return a:sendto("x", "127.0.0.1", 70000) end,
      "bad argument #3 to 'sendto'", "port out of range")
    H.raises(function() return a:sendto("x", "127.0.0.1") end,
      "bad argument #3 to 'sendto'")
    a:close()
  end)

  it("raise for data that is not a string", function()
    local a = udp()
    H.raises(function() return a:sendto({}, "127.0.0.1", 9) end,
      "bad argument #1 to 'sendto'")
    a:close()
  end)

  it("return nil, msg, code for sendto without address unconnected",
    function()
      local a = udp()
      H.assert_fail("EDESTADDRREQ", a:sendto("nowhere"))
      a:close()
    end)

  it("answer EBADF on a closed socket", function()
    local a = udp()
    a:close()
    H.assert_closed(a:sendto("x", "127.0.0.1", 9))
    H.assert_closed(a:sendto("x"))
    H.assert_closed(a:recvfrom())
  end)

  it("return nil, msg, code on a stream socket", function()
    local s = assert(sr.socket("inet", "stream"))
    H.assert_fail(nil, s:recvfrom())
    H.assert_fail(nil, s:sendto("x", "127.0.0.1", 9))
    s:close()
  end)

  it("wake a task blocked in recvfrom with EBADF when closed", function()
    local b = udp()
    local t = sr.spawn(function() return b:recvfrom() end)
    assert.equal("waiting", t:status())
    b:close()
    H.assert_closed(t:join(5))
  end)

  it("work inside a task", function()
    H.in_task(function()
      local a = udp()
      local b, bport = udp()
      local echo = sr.spawn(function()
        local data, host, port = b:recvfrom()
        b:sendto(data:upper(), host, port)
      end)
      assert.is_true(a:sendto("quiet", "127.0.0.1", bport))
      local data, host, port = a:recvfrom()
      assert.equal("QUIET", data)
      assert.equal("127.0.0.1", host)
      assert.equal(bport, port)
      echo:join(5)
      a:settimeout(0.05)
      H.assert_fail("ETIMEDOUT", a:recvfrom())
      a:close()
      b:close()
    end)
  end)

  it("let the top level receive while a task sends",
    H.on_two(udp, function(a, aport, b, bport)
      local t = sr.spawn(function()
        sr.sleep(0.01)
        return a:sendto("from task", "127.0.0.1", bport)
      end)
      assert.equal("from task", (b:recvfrom()))
      assert.is_true(t:join(5))
    end))
end)

-- ------------------------------------------------------------------------

describe("a datagram received in a stream reader's task", function()
  it("leaves the bytes the stream has not read yet alone", function()
    -- The handler is woken by "A\nB\n" and reads it where it landed, the
    -- loop's read buffer; recvfrom, which returns at once since the
    -- datagram is there already, must not land on top of "B\n".
    local u, uport = udp()
    local sender = udp()
    H.defer(function() u:close(); sender:close() end)
    local got
    local _, port = H.server(function(conn)
      local a = conn:read("l")
      local d = u:recvfrom()
      got = { a, d, conn:read("l") }
    end)
    assert(sender:sendto("ZZZZZZZZ\n", "127.0.0.1", uport))
    local c = H.connect(port)
    sr.sleep(0.05) -- the handler is waiting in conn:read by now
    assert(c:write("A\nB\n"))
    for _ = 1, 200 do
      if got then break end
      sr.sleep(0.01)
    end
    assert.same({ "A", "ZZZZZZZZ\n", "B" }, got)
  end)
end)

describe("s:read on a datagram socket", function()
  it("gives the datagrams one by one through s:lines()", function()
    local a, aport = udp()
    local b = udp()
    assert(b:sendto("one\ntwo", "127.0.0.1", aport))
    assert(b:sendto("three", "127.0.0.1", aport))
    local it, got = a:lines(), {}
    got[1], got[2] = it(), it()
    assert.same({ "one\ntwo", "three" }, got)
    a:close()
    b:close()
  end)

  it("raises for a format: a datagram is read whole", function()
    local u = udp()
    H.raises(function() return u:read("l") end, "bad argument #1 to 'read'",
      "no format")
    u:close()
  end)
end)

describe("connected UDP", function()
  it("connect sets the default peer for write and read",
    H.on_two(udp, function(a, aport, b, bport)
      assert.is_true(a:connect("127.0.0.1", bport))
      assert.equal("127.0.0.1", (a:getpeername()))
      assert.equal(bport, select(2, a:getpeername()))
      assert.equal(a, a:write("one datagram"))
      local data, host, port = b:recvfrom()
      assert.equal("one datagram", data)
      assert.equal("127.0.0.1", host)
      assert.equal(aport, port)
      b:sendto("reply", "127.0.0.1", aport)
      assert.equal("reply", a:read())
    end))

  it("write sends its arguments as one datagram",
    H.on_two(udp, function(a, aport, b, bport)
      assert(a:connect("127.0.0.1", bport))
      a:write("a", "b", 3):write("second")
      assert.equal("ab3", (b:recvfrom()))
      assert.equal("second", (b:recvfrom()))
    end))

  it("sendto works without an address",
    H.on_two(udp, function(a, aport, b, bport)
      assert(a:connect("127.0.0.1", bport))
      assert.is_true(a:sendto("no address"))
      assert.equal("no address", (b:recvfrom()))
    end))

  it("read returns the next datagram whole",
    H.on_two(udp, function(a, aport, b, bport)
      assert(a:connect("127.0.0.1", bport))
      b:sendto("first", "127.0.0.1", aport)
      b:sendto("second", "127.0.0.1", aport)
      assert.equal("first", a:read())
      assert.equal("second", a:read())
    end))

  it("connect resolves names", H.on_two(udp, function(a, aport, b, bport)
    assert.is_true(a:connect("localhost", bport))
    a:write("via name")
    assert.equal("via name", (b:recvfrom()))
  end))

  it("read times out with ETIMEDOUT and still works after",
    H.on_two(udp, function(a, aport, b, bport)
      assert(a:connect("127.0.0.1", bport))
      a:settimeout(0.05)
      H.assert_timeout(a:read())
      b:sendto("late", "127.0.0.1", aport)
      assert.equal("late", a:read())
    end))

  it("write on an unconnected socket returns nil, msg, code", function()
    local a = udp()
    H.assert_fail(nil, a:write("nowhere"))
    a:close()
  end)

  it("connect raises for a malformed address or a port out of range",
    function()
      local a = udp()
      H.raises(function() return a:connect("what?", 9) end,
        "bad argument #1 to 'connect'", "malformed address")
      H.raises(function() return a:connect("127.0.0.1", 65536) end,
        "bad argument #2 to 'connect'", "port out of range")
      a:close()
    end)

  it("answers EBADF on a closed socket", function()
    local a = udp()
    a:close()
    H.assert_closed(a:connect("127.0.0.1", 9))
    H.assert_closed(a:write("x"))
    H.assert_closed(a:read())
  end)

  -- a, connected to a port nobody has, is told so by a write or a read
  local function assert_refused(a)
    a:settimeout(0.2)
    local ok, msg, code
    for _ = 1, 5 do
      ok, msg, code = a:write("anyone?")
      if ok then ok, msg, code = a:read() end
      if not ok and code ~= "ETIMEDOUT" then break end
    end
    H.assert_fail("ECONNREFUSED", ok, msg, code)
  end

  it("reports a refused port on read or write", function()
    local a = udp()
    assert(a:connect("127.0.0.1", H.free_port("udp")))
    assert_refused(a)
    a:close()
  end)

  it("reads what a peer sends after a refused port was reported", function()
    local port = H.free_port("udp")
    local a = udp()
    H.defer(function() a:close() end)
    assert(a:connect("127.0.0.1", port))
    assert_refused(a)
    -- the port has someone now: what it sends still wakes the reader (the
    -- error stopped libuv's watch on the descriptor, which must restart)
    local b = assert(sr.udp("127.0.0.1", port))
    H.defer(function() b:close() end)
    assert(b:connect("127.0.0.1", select(2, a:getsockname())))
    a:settimeout(2)
    H.in_task(function()
      local got = {}
      local reader = sr.spawn(function() got[1], got[2] = a:read() end)
      sr.sleep(0.05) -- a waits in read first
      assert(b:write("here"))
      reader:join()
      assert.same({ "here" }, got)
    end)
  end)

  it("works inside a task", H.on_two(udp6, function(a, aport, b, bport)
    H.in_task(function()
      assert.is_true(a:connect("::1", bport))
      a:write("ping6")
      local data, host, port = b:recvfrom()
      assert.equal("ping6", data)
      assert.equal("::1", host)
      assert.equal(aport, port)
      b:sendto("pong6", host, port)
      assert.equal("pong6", a:read())
    end)
  end))
end)
