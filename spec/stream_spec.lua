-- Stream I/O: s:read formats, s:lines, end of file, line limits, gather
-- and chained writes, backpressure on a large write, writing to a peer that
-- went away, half-close with s:shutdown, and one reader per socket. Over
-- TCP on 127.0.0.1 and unix stream sockets; at top level and in tasks.
local H = require "helper"
local sr = H.sr

-- Helpers local to this file ---------------------------------------------

local MiB = 1024 * 1024

local function in_task(fn)
  local t = sr.spawn(function() fn(); return true end)
  local ok, err, code = t:join(20)
  if ok == nil and code == "ETIMEDOUT" then t:cancel() end
  assert(ok, err)
end

local function raises(fn, ...)
  local ok, err = pcall(fn)
  assert.is_false(ok, "expected an error")
  err = tostring(err)
  for _, s in ipairs({ ... }) do
    assert(err:find(s, 1, true), "error '" .. err .. "' lacks '" .. s .. "'")
  end
  return err
end

local function assert_fail(code, ok, msg, got)
  assert.is_nil(ok)
  assert.is_string(msg)
  assert.equal(code, got)
end

local function assert_eof(...)
  local ok, msg, code = ...
  assert.equal(3, select("#", ...))
  assert.is_nil(ok)
  assert.equal("end of file", msg)
  assert.equal("EOF", code)
end

-- A connected pair (client, accepted) over TCP or a unix stream socket.
-- Both get a generous timeout so that a broken test fails instead of
-- hanging.
local function pair(kind)
  local l, c
  if kind == "unix" then
    local path = H.tmppath()
    l = assert(sr.socket("unix", "stream"))
    assert(l:bind(path))
    assert(l:listen())
    c = assert(sr.socket("unix", "stream"))
    assert(c:connect(path))
  else
    l = assert(sr.socket("inet", "stream"))
    assert(l:bind("127.0.0.1", 0))
    assert(l:listen())
    local _, port = l:getsockname()
    c = assert(sr.socket("inet", "stream"))
    assert(c:connect("127.0.0.1", port))
  end
  local a = assert(l:accept())
  l:close()
  c:settimeout(10)
  a:settimeout(10)
  return c, a
end

after_each(H.assert_clean)
-- A test that failed half-way must not leave its sockets to the next one.
after_each(function()
  collectgarbage()
  collectgarbage()
  H.settle()
end)

-- ------------------------------------------------------------------------

for _, kind in ipairs({ "tcp", "unix" }) do
  describe("s:read over " .. kind, function()
    local c, a
    before_each(function() c, a = pair(kind) end)
    after_each(function()
      c:close()
      a:close()
    end)

    it("reads a line without its LF with \"l\"", function()
      a:write("one\ntwo\n")
      assert.equal("one", c:read("l"))
      assert.equal("two", c:read("l"))
    end)

    it("reads a line without its CRLF with \"l\"", function()
      a:write("one\r\ntwo\r\n")
      assert.equal("one", c:read("l"))
      assert.equal("two", c:read("l"))
    end)

    it("keeps a lone CR inside a line", function()
      a:write("a\rb\n")
      assert.equal("a\rb", c:read("l"))
    end)

    it("reads an empty line", function()
      a:write("\n\r\nx\n")
      assert.equal("", c:read("l"))
      assert.equal("", c:read("l"))
      assert.equal("x", c:read("l"))
    end)

    it("reads a line with its end with \"L\"", function()
      a:write("one\ntwo\r\n")
      assert.equal("one\n", c:read("L"))
      assert.equal("two\r\n", c:read("L"))
    end)

    it("accepts the old spellings \"*l\" and \"*a\"", function()
      a:write("old\nrest")
      a:close()
      assert.equal("old", c:read("*l"))
      assert.equal("rest", c:read("*a"))
    end)

    it("reads everything until end of file with \"a\"", function()
      a:write("first\n", "second\n", "third")
      a:close()
      assert.equal("first\nsecond\nthird", c:read("a"))
    end)

    it("returns \"\" for \"a\" at end of file", function()
      a:close()
      assert.equal("", c:read("a"))
      assert.equal("", c:read("a"))
    end)

    it("reads exactly n bytes", function()
      a:write("abcdefghij")
      assert.equal("abc", c:read(3))
      assert.equal("defg", c:read(4))
      assert.equal("hij", c:read(3))
    end)

    it("waits for n bytes that arrive in pieces", function()
      local t = sr.spawn(function()
        for i = 1, 5 do
          a:write(tostring(i))
          sr.sleep(0.005)
        end
      end)
      assert.equal("12345", c:read(5))
      t:join(5)
    end)

    it("returns what is available with no format", function()
      a:write("some bytes")
      local got = c:read()
      assert.is_string(got)
      assert.is_true(#got >= 1)
      assert.equal(got, ("some bytes"):sub(1, #got))
      local rest = #got < 10 and c:read(10 - #got) or ""
      assert.equal("some bytes", got .. rest)
    end)

    it("returns \"\" for read(0) on an open connection", function()
      assert.equal("", c:read(0))
      a:write("x")
      assert.equal("", c:read(0))
      assert.equal("x", c:read(1))
    end)

    it("returns nil, \"end of file\", \"EOF\" for read(0) at end of file",
      function()
        a:close()
        assert.equal("", c:read("a"))
        assert_eof(c:read(0))
      end)

    it("gives partial data at end of file, then nil, EOF (\"l\")", function()
      a:write("line\npartial")
      a:close()
      assert.equal("line", c:read("l"))
      assert.equal("partial", c:read("l"))
      assert_eof(c:read("l"))
      assert_eof(c:read("l"))
    end)

    it("gives partial data at end of file, then nil, EOF (n)", function()
      a:write("short")
      a:close()
      assert.equal("short", c:read(100))
      assert_eof(c:read(100))
    end)

    it("gives partial data at end of file, then nil, EOF (no format)",
      function()
        a:write("tail")
        a:close()
        local got = ""
        for _ = 1, 10 do
          local d = c:read()
          if not d then break end
          got = got .. d
        end
        assert.equal("tail", got)
        assert_eof(c:read())
      end)

    it("gives partial data at end of file, then nil, EOF (\"L\")", function()
      a:write("no newline")
      a:close()
      assert.equal("no newline", c:read("L"))
      assert_eof(c:read("L"))
    end)

    it("reads a line spanning many small writes", function()
      local t = sr.spawn(function()
        for i = 1, 200 do
          a:write(string.char(97 + i % 26))
          if i % 20 == 0 then sr.sleep(0) end
        end
        a:write("\n")
      end)
      local line = c:read("l")
      local want = {}
      for i = 1, 200 do want[i] = string.char(97 + i % 26) end
      assert.equal(table.concat(want), line)
      t:join(5)
    end)

    it("raises for an invalid format", function()
      raises(function() return c:read("x") end,
        "bad argument #1 to 'read'", "invalid format")
      raises(function() return c:read("") end,
        "bad argument #1 to 'read'", "invalid format")
      raises(function() return c:read(-1) end, "bad argument #1 to 'read'")
      raises(function() return c:read({}) end, "bad argument #1 to 'read'")
      raises(function() return c:read(1.5) end, "bad argument #1 to 'read'")
    end)

    it("raises for more than one format", function()
      raises(function() return c:read("l", "l") end, "one format")
    end)

    it("returns nil, \"line too long\", \"ENOBUFS\" past setmaxline",
      function()
        assert.is_true(c:setmaxline(16))
        a:write(string.rep("x", 100))
        local ok, msg, code = c:read("l")
        assert.is_nil(ok)
        assert.equal("line too long", msg)
        assert.equal("ENOBUFS", code)
        -- the bytes are still there for a counted read
        assert.equal(string.rep("x", 100), c:read(100))
        a:write("short\n")
        assert.equal("short", c:read("l"))
      end)

    it("raises for a non-positive maxline", function()
      raises(function() return c:setmaxline(0) end,
        "bad argument #1 to 'setmaxline'")
    end)

    it("reads inside a task", function()
      a:write("in\r\ntask\npartial")
      a:close()
      in_task(function()
        assert.equal("in", c:read("l"))
        assert.equal("task\n", c:read("L"))
        assert.equal("par", c:read(3))
        assert.equal("tial", c:read("a"))
        assert_eof(c:read("l"))
      end)
    end)
  end)
end

-- ------------------------------------------------------------------------

describe("s:lines", function()
  it("iterates over lines until end of file", function()
    local c, a = pair("tcp")
    a:write("a\nb\r\n\nlast")
    a:close()
    local got = {}
    for line in c:lines() do got[#got + 1] = line end
    assert.same({ "a", "b", "", "last" }, got)
    c:close()
  end)

  it("takes a format", function()
    local c, a = pair("tcp")
    a:write("a\nb\n")
    a:close()
    local got = {}
    for line in c:lines("L") do got[#got + 1] = line end
    assert.same({ "a\n", "b\n" }, got)
    c:close()
  end)

  it("takes a count", function()
    local c, a = pair("unix")
    a:write("abcdefg")
    a:close()
    local got = {}
    for chunk in c:lines(3) do got[#got + 1] = chunk end
    assert.same({ "abc", "def", "g" }, got)
    c:close()
  end)

  it("ends at a read error", function()
    local c, a = pair("tcp")
    c:settimeout(0.05)
    a:write("one\n")
    local got = {}
    for line in c:lines() do got[#got + 1] = line end
    assert.same({ "one" }, got) -- then the timeout ends the loop
    c:close()
    a:close()
  end)

  it("raises for an invalid format on the first call", function()
    local c, a = pair("tcp")
    raises(function() return c:lines("x")() end, "invalid format")
    c:close()
    a:close()
  end)

  it("works inside a task", function()
    local c, a = pair("tcp")
    in_task(function()
      local t = sr.spawn(function()
        for i = 1, 3 do a:write("line ", i, "\n") end
        a:close()
      end)
      local got = {}
      for line in c:lines() do got[#got + 1] = line end
      assert.same({ "line 1", "line 2", "line 3" }, got)
      t:join(5)
    end)
    c:close()
  end)
end)

-- ------------------------------------------------------------------------

describe("s:write", function()
  it("writes several strings in order (gather)", function()
    local c, a = pair("tcp")
    assert.equal(c, c:write("a", "bc", "", "def", "\n"))
    assert.equal("abcdef", a:read("l"))
    c:close()
    a:close()
  end)

  it("writes many strings in one call", function()
    local c, a = pair("tcp")
    local parts = {}
    for i = 1, 100 do parts[i] = tostring(i % 10) end
    c:write(table.unpack(parts))
    assert.equal(table.concat(parts), a:read(100))
    c:close()
    a:close()
  end)

  it("writes numbers as file:write does", function()
    local c, a = pair("tcp")
    c:write(42, " ", 1.5, "\n")
    assert.equal("42 1.5", a:read("l"))
    c:close()
    a:close()
  end)

  it("returns the socket so that calls chain", function()
    local c, a = pair("unix")
    local r = c:write("a"):write("b"):write("c\n")
    assert.equal(c, r)
    assert.equal("abc", a:read("l"))
    c:close()
    a:close()
  end)

  it("returns the socket when given nothing to write", function()
    local c, a = pair("tcp")
    assert.equal(c, c:write())
    c:close()
    a:close()
  end)

  it("raises for an argument that is not a string or a number", function()
    local c, a = pair("tcp")
    raises(function() return c:write({}) end, "bad argument #1 to 'write'")
    raises(function() return c:write("ok", true) end,
      "bad argument #2 to 'write'")
    raises(function() return c:write("ok", nil) end,
      "bad argument #2 to 'write'")
    c:close()
    a:close()
  end)

  it("delivers an 8 MiB write intact to a reader in another task",
    function()
      local c, a = pair("tcp")
      local parts = {}
      for i = 1, 8 * 1024 do
        parts[i] = string.format("%10d", i) .. string.rep("-", 1013) .. "\n"
      end
      local big = table.concat(parts)
      assert.equal(8 * MiB, #big)
      local reader = sr.spawn(function() return a:read(8 * MiB) end)
      assert.equal(c, c:write(big))
      local got = reader:join(20)
      assert.equal(#big, #(got or ""))
      assert.is_true(got == big)
      c:close()
      a:close()
    end)

  it("delivers an 8 MiB write from a task to a reader at top level",
    function()
      local c, a = pair("unix")
      local big = string.rep("0123456789abcdef", MiB / 2)
      local writer = sr.spawn(function()
        c:write(big)
        c:close()
        return true
      end)
      local got = a:read("a")
      assert.equal(#big, #got)
      assert.is_true(got == big)
      assert.is_true(writer:join(10))
      a:close()
    end)

  it("waits above the high-water mark and times out with ETIMEDOUT",
    function()
      local c, a = pair("tcp")
      c:settimeouts(nil, nil, 0.1)
      local chunk = string.rep("w", 256 * 1024)
      local ok, msg, code
      for _ = 1, 400 do -- at most 100 MiB, far past any socket buffer
        ok, msg, code = c:write(chunk)
        if not ok then break end
      end
      assert.is_nil(ok)
      assert.equal("timeout", msg)
      assert.equal("ETIMEDOUT", code)
      c:close()
      a:close()
    end)

  it("returns nil, msg, code when the peer reset the connection", function()
    local c, a = pair("tcp")
    assert(a:setsockopt("linger", 0)) -- close sends RST
    a:close()
    local ok, msg, code
    for _ = 1, 100 do
      ok, msg, code = c:write(string.rep("r", 64 * 1024))
      if not ok then break end
      sr.sleep(0.01)
    end
    assert.is_nil(ok)
    assert.is_string(msg)
    assert.is_true(code == "EPIPE" or code == "ECONNRESET",
      "unexpected code " .. tostring(code))
    -- the process is still here, and the socket still answers
    ok, msg, code = c:write("again")
    assert.is_nil(ok)
    assert.is_true(code == "EPIPE" or code == "ECONNRESET")
    assert.is_true(c:close())
  end)

  it("does not kill the binary when the peer resets", function()
    local out, err, status = H.run_script([[
      local sr = require "sockrun"
      local srv = assert(sr.listen("127.0.0.1", 0, function(conn)
        conn:read(1) -- the client is surely connected: now reset it
        conn:setsockopt("linger", 0)
      end))
      local _, port = srv:getsockname()
      local ok, e = pcall(function()
        local c = assert(sr.connect("127.0.0.1", port))
        c:write("x")
        local ok, msg, code
        for _ = 1, 100 do
          ok, msg, code = c:write(string.rep("r", 65536))
          if not ok then break end
          sr.sleep(0.01)
        end
        print("write", ok, code)
        c:close()
      end)
      srv:close() -- even on failure, so that the process can end
      assert(ok, e)
      print("alive")
    ]], "", 10)
    assert.equal(0, status, err)
    assert.matches("write\tnil\tE[A-Z]+", out)
    assert.matches("alive", out)
  end)

  it("writes inside a task", function()
    local c, a = pair("tcp")
    in_task(function()
      assert.equal(c, c:write("x", 1, "y\n"))
      assert.equal("x1y", a:read("l"))
    end)
    c:close()
    a:close()
  end)
end)

-- ------------------------------------------------------------------------

describe("s:shutdown", function()
  it("makes the peer read end of file after the data sent", function()
    local c, a = pair("tcp")
    c:write("before shutdown\n")
    assert.is_true(c:shutdown())
    assert.equal("before shutdown", a:read("l"))
    assert_eof(a:read("l"))
    c:close()
    a:close()
  end)

  it("leaves the half-closed socket readable", function()
    local c, a = pair("tcp")
    c:write("question\n")
    assert.is_true(c:shutdown())
    assert.equal("question\n", a:read("a"))
    a:write("answer\n")
    a:close()
    assert.equal("answer", c:read("l"))
    assert_eof(c:read("l"))
    c:close()
  end)

  it("makes a later write return nil, msg, \"EPIPE\"", function()
    local c, a = pair("tcp")
    assert.is_true(c:shutdown())
    local ok, msg, code = c:write("too late")
    assert.is_nil(ok)
    assert.is_string(msg)
    assert.equal("EPIPE", code)
    assert.equal("", a:read("a"))
    c:close()
    a:close()
  end)

  it("is harmless when called twice", function()
    local c, a = pair("unix")
    assert.is_true(c:shutdown())
    assert.is_true(c:shutdown())
    assert.equal("", a:read("a"))
    c:close()
    a:close()
  end)

  it("flushes a queued large write before the end of file", function()
    local c, a = pair("tcp")
    local big = string.rep("s", 4 * MiB)
    local reader = sr.spawn(function() return a:read("a") end)
    c:write(big)
    assert.is_true(c:shutdown())
    local got = reader:join(20)
    assert.equal(#big, #(got or ""))
    c:close()
    a:close()
  end)

  it("returns nil, msg, code on an unconnected socket", function()
    local s = assert(sr.socket("inet", "stream"))
    local ok, msg, code = s:shutdown()
    assert.is_nil(ok)
    assert.is_string(msg)
    assert.is_string(code)
    s:close()
  end)

  it("works inside a task", function()
    local c, a = pair("tcp")
    in_task(function()
      c:write("bye")
      assert.is_true(c:shutdown())
      assert.equal("bye", a:read("a"))
      assert_fail("EPIPE", c:write("x"))
    end)
    c:close()
    a:close()
  end)
end)

-- ------------------------------------------------------------------------

describe("one reader per socket", function()
  it("raises a \"busy\" error for a second task reading", function()
    local c, a = pair("tcp")
    local first = sr.spawn(function() return c:read("l") end)
    assert.equal("waiting", first:status())
    local second = sr.spawn(function()
      return pcall(c.read, c, "l")
    end)
    local ok, err = second:join(5)
    assert.is_false(ok)
    assert.matches("busy", tostring(err))
    a:write("for the first\n")
    assert.equal("for the first", first:join(5))
    c:close()
    a:close()
  end)

  it("raises a \"busy\" error at top level while a task reads", function()
    local c, a = pair("tcp")
    local first = sr.spawn(function() return c:read("l") end)
    raises(function() return c:read("l") end, "busy")
    a:write("still first\n")
    assert.equal("still first", first:join(5))
    c:close()
    a:close()
  end)

  it("lets another task read once the first is done", function()
    local c, a = pair("tcp")
    a:write("1\n2\n")
    local t1 = sr.spawn(function() return c:read("l") end)
    assert.equal("1", t1:join(5))
    local t2 = sr.spawn(function() return c:read("l") end)
    assert.equal("2", t2:join(5))
    c:close()
    a:close()
  end)

  it("frees the socket for another reader when the reader is cancelled",
    function()
      local c, a = pair("tcp")
      local first = sr.spawn(function() return c:read("l") end)
      assert.equal("waiting", first:status())
      assert.is_true(first:cancel())
      assert.equal("cancelled", first:status())
      a:write("for the second\n")
      local second = sr.spawn(function() return c:read("l") end)
      assert.equal("for the second", second:join(5))
      c:close()
      a:close()
    end)

  it("frees the socket for another reader after a timeout", function()
    local c, a = pair("tcp")
    local first = sr.spawn(function()
      c:settimeout(0.02)
      return c:read("l")
    end)
    assert.same({ nil, "timeout", "ETIMEDOUT" }, { first:join(5) })
    c:settimeout(5)
    a:write("next\n")
    assert.equal("next", c:read("l"))
    c:close()
    a:close()
  end)

  it("allows reading in one task while another writes", function()
    local c, a = pair("tcp")
    local reader = sr.spawn(function() return c:read("l") end)
    local writer = sr.spawn(function() return c:write("ping\n") == c end)
    assert.is_true(writer:join(5))
    assert.equal("ping", a:read("l"))
    a:write("pong\n")
    assert.equal("pong", reader:join(5))
    c:close()
    a:close()
  end)
end)
