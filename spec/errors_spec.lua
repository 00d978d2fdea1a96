-- The error convention end to end: operational failures return exactly
-- nil, message, code; misuse raises "bad argument #N to 'fn' (problem)";
-- and nothing a script does kills the process.
local H = require "helper"
local sr = H.sr

after_each(H.run_deferred)
after_each(H.assert_clean)

describe("an operational failure", function()
  it("gives nil, \"connection refused\", ECONNREFUSED from sr.connect", function()
    H.assert_fail_msg("connection refused", "ECONNREFUSED",
      sr.connect("127.0.0.1", H.free_port()))
  end)

  it("gives nil, \"connection refused\", ECONNREFUSED from s:connect", function()
    local s = assert(sr.socket("inet", "stream"))
    H.assert_fail_msg("connection refused", "ECONNREFUSED",
      s:connect("127.0.0.1", H.free_port()))
    s:close()
  end)

  it("gives ECONNREFUSED inside a task too", function()
    local port = H.free_port()
    local t = sr.spawn(function() return sr.connect("127.0.0.1", port) end)
    H.assert_fail_msg("connection refused", "ECONNREFUSED", t:join())
  end)

  it("gives EADDRINUSE from sr.listen on a port that is taken", function()
    local srv, port = H.server(function() end)
    H.assert_fail_msg("address already in use", "EADDRINUSE",
      sr.listen("127.0.0.1", port, function() end))
    srv:close()
  end)

  it("gives EADDRINUSE from s:bind or s:listen on a port that is taken", function()
    local srv, port = H.server(function() end)
    local s = assert(sr.socket("inet", "stream"))
    local ok, msg, code = s:bind("127.0.0.1", port)
    if ok then ok, msg, code = s:listen() end
    assert.is_nil(ok)
    assert.equal("address already in use", msg)
    assert.equal("EADDRINUSE", code)
    s:close()
    srv:close()
  end)

  it("gives EADDRINUSE from sr.udp on a port that is taken", function()
    local u = assert(sr.udp("127.0.0.1", 0))
    local _, port = u:getsockname()
    H.assert_fail_msg("address already in use", "EADDRINUSE", sr.udp("127.0.0.1", port))
    u:close()
  end)

  it("gives nil, \"timeout\", ETIMEDOUT when a read times out", function()
    local srv, port = H.server(function(c)
      local line = c:read("l")
      if line then c:write("got " .. line .. "\n") end
    end)
    local c = H.connect(port)
    c:settimeout(0.05)
    H.assert_timeout(c:read("l"))
    -- the socket is still usable after a timeout
    c:write("x\n")
    assert.equal("got x", c:read("l"))
    c:close()
    srv:close()
  end)

  it("gives ETIMEDOUT when accept times out", function()
    local srv = assert(sr.socket("inet", "stream"))
    assert(srv:bind("127.0.0.1", 0))
    assert(srv:listen())
    srv:settimeout(0.02)
    H.assert_timeout(srv:accept())
    srv:close()
  end)

  it("gives nil, \"end of file\", EOF after the peer closes", function()
    local srv, port = H.server(function(c) c:write("partial") end)
    local c = H.connect(port)
    assert.equal("partial", c:read("l"))
    H.assert_eof(c:read("l"))
    H.assert_eof(c:read(4))
    H.assert_eof(c:read())
    assert.equal("", c:read("a"))
    c:close()
    srv:close()
  end)

  it("gives nil, \"socket is closed\", EBADF for every call on a closed socket", function()
    local s = H.closed_socket()
    local calls = {
      { "bind", "127.0.0.1", 0 }, { "listen" }, { "accept" },
      { "connect", "127.0.0.1", 80 }, { "read" }, { "read", "l" }, { "read", 5 },
      { "setsockopt", "reuseaddr", true }, { "getsockopt", "reuseaddr" },
      { "getsockname" }, { "getpeername" }, { "shutdown" },
      { "settimeout", 1 }, { "fileno" },
    }
    for _, call in ipairs(calls) do
      local name = call[1]
      local r = table.pack(s[name](s, table.unpack(call, 2)))
      assert.equal(3, r.n, name .. ": expected nil, message, code")
      assert.is_nil(r[1], name)
      assert.equal("socket is closed", r[2], name)
      assert.equal("EBADF", r[3], name)
    end
  end)

  it("gives EBADF from write on a closed socket", function()
    local s = H.closed_socket()
    H.assert_closed(s:write("data"))
    H.assert_closed(s:write("a", "b"))
  end)

  it("gives EBADF from datagram calls on a closed socket", function()
    local u = assert(sr.udp())
    u:close()
    H.assert_closed(u:sendto("x", "127.0.0.1", 9))
    H.assert_closed(u:recvfrom())
  end)

  it("lets close be called again, returning true", function()
    local s = assert(sr.socket("inet", "stream"))
    assert.is_true(s:close())
    assert.is_true(s:close())
  end)

  it("wakes a task reading a socket that another task closes with EBADF", function()
    local srv, port = H.server(function(c) c:read("a") end)
    local c = H.connect(port)
    local reader = sr.spawn(function() return c:read("l") end)
    assert.equal("waiting", reader:status())
    c:close()
    H.assert_closed(reader:join())
    srv:close()
  end)

  it("gives nil, message, code from write once the peer reset the connection", function()
    local srv, port = H.server(function(c)
      c:read("l") -- the client is connected: now reset
      c:setsockopt("linger", 0)
      c:close() -- sends RST
    end)
    local c = H.connect(port)
    c:settimeout(2)
    c:write("go\n")
    c:read() -- wait for the reset (EOF or ECONNRESET)
    local chunk = string.rep("x", 65536)
    local r
    for _ = 1, 200 do
      r = table.pack(c:write(chunk))
      if r[1] == nil then break end
    end
    assert.is_nil(r[1])
    assert.equal(3, r.n)
    assert.equal("string", type(r[2]))
    assert.is_truthy(r[3] == "EPIPE" or r[3] == "ECONNRESET", tostring(r[3]))
    c:close()
    srv:close()
  end)
end)

describe("misuse", function()
  local s
  before_each(function() s = assert(sr.socket("inet", "stream")) end)
  after_each(function() s:close() end)

  it("raises on an unknown domain", function()
    H.raises(function() return sr.socket("appletalk", "stream") end,
      "bad argument #1 to 'socket'", "unknown domain")
    H.raises(function() return sr.socket(12345, "stream") end,
      "bad argument #1 to 'socket'", "unknown domain")
    H.raises(function() return sr.socket(nil, "stream") end,
      "bad argument #1 to 'socket'")
  end)

  it("raises on an unknown type", function()
    H.raises(function() return sr.socket("inet", "raw") end,
      "bad argument #2 to 'socket'", "unknown type")
    H.raises(function() return sr.socket("inet", 12345) end,
      "bad argument #2 to 'socket'", "unknown type")
  end)

  it("raises on an unknown option name", function()
    H.raises(function() return s:setsockopt("bogus", true) end,
      "bad argument #1 to 'setsockopt'", "unknown option")
    H.raises(function() return s:getsockopt("bogus") end,
      "bad argument #1 to 'getsockopt'", "unknown option")
  end)

  it("raises on a port out of range", function()
    H.raises(function() return s:bind("127.0.0.1", 65536) end,
      "bad argument #2 to 'bind'", "port out of range")
    H.raises(function() return s:connect("127.0.0.1", -1) end,
      "bad argument #2 to 'connect'", "port out of range")
    H.raises(function() return sr.connect("127.0.0.1", 70000) end,
      "bad argument #2 to 'connect'", "port out of range")
    H.raises(function() return sr.listen("127.0.0.1", 70000, function() end) end,
      "bad argument #2 to 'listen'", "port out of range")
    H.raises(function() return sr.udp("127.0.0.1", -5) end,
      "bad argument #2 to 'udp'", "port out of range")
    local u = assert(sr.udp())
    local err = H.raises(function() return u:sendto("x", "127.0.0.1", 65536) end,
      "bad argument #3 to 'sendto'", "port out of range")
    u:close()
    assert.is_string(err)
  end)

  it("raises on a port of the wrong type", function()
    H.raises(function() return s:bind("127.0.0.1", "eighty") end,
      "bad argument #2 to 'bind'")
    H.raises(function() return s:bind("127.0.0.1", 80.5) end,
      "bad argument #2 to 'bind'")
    H.raises(function() return s:connect("127.0.0.1", {}) end,
      "bad argument #2 to 'connect'")
    H.raises(function() return sr.udp("127.0.0.1", true) end,
      "bad argument #2 to 'udp'")
  end)

  it("raises on a malformed address", function()
    H.raises(function() return s:bind("not an address!", 0) end,
      "bad argument #1 to 'bind'", "malformed address")
    H.raises(function() return sr.connect("bad host!", 80) end,
      "bad argument #1 to 'connect'", "malformed address")
  end)

  it("raises on a malformed numeric address, naming the caller's argument", function()
    H.raises(function() return s:connect("999.1.1.1", 80) end,
      "bad argument #1 to 'connect'", "malformed")
    H.raises(function() return s:bind("256.0.0.1", 0) end,
      "bad argument #1 to 'bind'", "malformed")
    local s6 = assert(sr.socket("inet6", "stream"))
    local ok, err = pcall(function() return s6:connect("::g", 80) end)
    s6:close()
    assert.is_false(ok)
    assert.matches("bad argument #1 to 'connect'", err, 1, true)
    assert.matches("malformed", err, 1, true)
  end)

  it("raises on a malformed numeric address given to sr.listen, sr.udp, sr.connect", function()
    H.defer(function() collectgarbage(); collectgarbage() end)
    H.raises(function() return sr.listen("300.1.1.1", 0, function() end) end,
      "bad argument #1 to 'listen'", "malformed")
    H.raises(function() return sr.udp("300.1.1.1", 0) end,
      "bad argument #1 to 'udp'", "malformed")
    H.raises(function() return sr.connect("300.1.1.1", 80) end,
      "bad argument #1 to 'connect'", "malformed")
  end)

  it("leaves no socket behind when sr.listen, sr.udp or sr.connect raise", function()
    H.defer(function() collectgarbage(); collectgarbage() end)
    assert.is_false(pcall(sr.listen, "300.1.1.1", 0, function() end))
    assert.is_false(pcall(sr.udp, "300.1.1.1", 0))
    assert.is_false(pcall(sr.connect, "300.1.1.1", 80))
    s:close()
    assert.equal(0, (H.settle()))
  end)

  it("reports the caller's position, as luaL_argerror does", function()
    -- not tail calls: a Lua tail call leaves no caller frame to point at
    local err = H.raises(function()
      local c = sr.connect("127.0.0.1", 70000)
      return c
    end, "port out of range")
    assert.matches("errors_spec%.lua:%d+:", err)
    err = H.raises(function()
      local ok = s:bind("127.0.0.1", -1)
      return ok
    end, "port out of range")
    assert.matches("errors_spec%.lua:%d+:", err)
  end)

  it("raises on a bad read format or write argument on a closed socket too",
    function()
      s:close()
      H.raises(function() return s:read("q") end, "invalid format")
      H.raises(function() return s:read("l", -1) end, "count must be >= 0")
      H.raises(function() return s:write({}) end, "bad argument #1 to 'write'")
      H.assert_closed(s:read("l", 5))
      H.assert_closed(s:write("x", 1))
    end)

  it("raises on an invalid read format", function()
    H.raises(function() return s:read("x") end,
      "bad argument #1 to 'read'", "invalid format")
    H.raises(function() return s:read("q") end,
      "bad argument #1 to 'read'", "invalid format")
    H.raises(function() return s:read({}) end, "bad argument #1 to 'read'")
    H.raises(function() return s:read(-1) end, "bad argument #1 to 'read'")
  end)

  it("raises on a negative timeout", function()
    H.raises(function() return s:settimeout(-1) end,
      "bad argument #1 to 'settimeout'")
    H.raises(function() return s:settimeouts(1, -1, 1) end,
      "bad argument #2 to 'settimeouts'")
    H.raises(function() return sr.sleep(-0.5) end, "bad argument #1 to 'sleep'")
  end)

  it("raises on a negative timeout in sr.connect's options", function()
    H.defer(function() collectgarbage(); collectgarbage() end)
    local srv, port = H.echo_server()
    local ok, err = pcall(function()
      return sr.connect("127.0.0.1", port, { timeout = -1 })
    end)
    srv:close()
    s:close()
    assert.is_false(ok)
    assert.matches("bad argument #3 to 'connect'", err, 1, true)
    assert.equal(0, (H.settle()))
  end)

  it("raises on an options argument that is not a table", function()
    H.raises(function() return sr.connect("127.0.0.1", 80, "fast") end,
      "bad argument #3 to 'connect'")
  end)

  it("raises on a handler that is not a function", function()
    H.raises(function() return sr.listen("127.0.0.1", 0, "handler") end,
      "bad argument #3 to 'listen'")
  end)

  it("raises on a method called on something that is not a socket", function()
    local ok, err = pcall(function() return s.read({}) end)
    assert.is_false(ok)
    assert.matches("sockrun.socket expected", err, 1, true)
  end)
end)

describe("a script run by the binary", function()
  -- A risky script is run as a spawned task (so the test is about the
  -- risk, not the main chunk); it prints "finished" when it gets to the end.
  local function run_risky(body)
    local src = 'local sr = require "sockrun"\n' ..
      'sr.spawn(function()\n' .. body .. '\nprint("finished")\nend)\n'
    local out, err, code = H.run_script(src, nil, { timeout = 20 })
    assert.is_true(code == 0 or code == 1,
      "exit status " .. tostring(code) .. "; stderr: " .. err)
    assert.is_true(code < 128)
    return out, err, code
  end

  it("survives writing to a peer that reset the connection", function()
    local out, err = run_risky([[
      local srv = assert(sr.listen("127.0.0.1", 0, function(c)
        c:read("l")
        c:setsockopt("linger", 0)
        c:close()
      end))
      local _, port = srv:getsockname()
      local c = assert(sr.connect("127.0.0.1", port))
      c:settimeout(2)
      c:write("go\n")
      c:read()
      local chunk = string.rep("x", 65536)
      local ok, msg, code
      for _ = 1, 200 do
        ok, msg, code = c:write(chunk)
        if not ok then break end
      end
      print("write:", ok, code)
      c:close()
      srv:close()
    ]])
    assert.matches("finished", out, 1, true)
    assert.matches("write:\tnil\t", out, 1, true)
    assert.equal("", err)
  end)

  it("survives closing a socket from another task while it is read", function()
    local out, err = run_risky([[
      local srv = assert(sr.listen("127.0.0.1", 0, function(c) c:read("a") end))
      local _, port = srv:getsockname()
      local c = assert(sr.connect("127.0.0.1", port))
      local reader = sr.spawn(function() return c:read("l") end)
      local closer = sr.spawn(function() sr.sleep(0.02); c:close() end)
      print("read:", reader:join())
      closer:join()
      print("again:", c:read())
      srv:close()
    ]])
    assert.matches("finished", out, 1, true)
    assert.matches("read:\tnil\tsocket is closed\tEBADF", out, 1, true)
    assert.matches("again:\tnil\tsocket is closed\tEBADF", out, 1, true)
    assert.equal("", err)
  end)

  it("survives garbage-collecting sockets with queued writes", function()
    local out = run_risky([[
      local srv = assert(sr.listen("127.0.0.1", 0, function(c)
        sr.sleep(0.3) -- never reads: the client's writes queue up
      end))
      local _, port = srv:getsockname()
      for _ = 1, 3 do
        local c = assert(sr.connect("127.0.0.1", port))
        c:settimeouts(nil, nil, 0.05)
        local chunk = string.rep("y", 1 << 20)
        for _ = 1, 32 do
          if not c:write(chunk) then break end -- ETIMEDOUT: queue is full
        end
        c = nil
      end
      collectgarbage()
      collectgarbage()
      sr.sleep(0.05)
      collectgarbage()
      srv:close()
    ]])
    assert.matches("finished", out, 1, true)
  end)

  it("keeps serving after an error in a connection handler", function()
    local out, err, code = run_risky([[
      local srv = assert(sr.listen("127.0.0.1", 0, function(c)
        local line = c:read("l")
        if line == "fail" then error("handler exploded") end
        c:write("served " .. line .. "\n")
      end))
      local _, port = srv:getsockname()
      local c1 = assert(sr.connect("127.0.0.1", port))
      c1:write("fail\n")
      print("first:", c1:read("l"))
      c1:close()
      local c2 = assert(sr.connect("127.0.0.1", port))
      c2:write("next\n")
      print("second:", c2:read("l"))
      c2:close()
      srv:close()
    ]])
    assert.equal(0, code)
    assert.matches("finished", out, 1, true)
    assert.matches("first:\tnil\tend of file\tEOF", out, 1, true)
    assert.matches("second:\tserved next", out, 1, true)
    assert.matches("handler exploded", err, 1, true)
    assert.matches("stack traceback", err, 1, true)
  end)

  it("survives raising misuse errors in many tasks", function()
    local out, err, code = run_risky([[
      for i = 1, 20 do
        sr.spawn(function()
          local s = sr.socket("inet", "stream")
          local c <close> = s
          s:setsockopt("bogus", i)
        end)
      end
    ]])
    assert.equal(0, code)
    assert.matches("finished", out, 1, true)
    assert.matches("unknown option", err, 1, true)
  end)
end)
