-- Stream I/O: s:read formats, s:lines, end of file, line limits, gather
-- and chained writes, backpressure on a large write, writing to a peer that
-- went away, half-close with s:shutdown, and one reader per socket. Over
-- TCP on 127.0.0.1 and unix stream sockets; at top level and in tasks.
local H = require "helper"
local sr = H.sr

-- Helpers local to this file ---------------------------------------------

local MiB = 1024 * 1024

-- Tasks here move megabytes: allow them twice the usual time.
local function in_task(fn) H.in_task(fn, 20) end

-- A test body: fn(c, a) on a fresh connected pair of `kind` (see H.pair),
-- both closed when fn returns.
local function on_pair(kind, fn)
  return function()
    local c, a = H.pair(kind)
    fn(c, a)
    c:close()
    a:close()
  end
end


-- Fill the heap with objects whose finalizer closes `s` while armed, one
-- at most (as a pool dropping its connections might), and make the
-- collector run all along (restored after the test); returns once such
-- finalizers run, a few per step. Returns arm(on) and closed().
local function finalizers_closing(s)
  local ran, armed, closed = 0, false, false
  local closer = { __gc = function()
    ran = ran + 1
    if armed and not closed then s:close() closed = true end
  end }
  for _ = 1, 20000 do setmetatable({}, closer) end
  collectgarbage("incremental", 0, 100) -- collect all along
  H.defer(function() collectgarbage("incremental", 200, 100) end)
  repeat collectgarbage("step", 0) until ran > 0
  return function(on) armed = on end, function() return closed end
end

after_each(H.run_deferred) -- removes the paths of unix pairs
after_each(H.assert_clean)
-- A test that failed half-way must not leave its sockets to the next one.
after_each(H.collect)

-- ------------------------------------------------------------------------

for _, kind in ipairs({ "tcp", "unix" }) do
  describe("s:read over " .. kind, function()
    local c, a
    before_each(function() c, a = H.pair(kind) end)
    after_each(function()
      c:close()
      a:close()
    end)

    describe("with several formats and \"n\"", function()
      -- Values as a list with their count, to compare whole results.
      local function pack(...) return table.pack(...) end
      local function same(want, got)
        assert.equal(want.n, got.n)
        for i = 1, want.n do
          assert.equal(want[i], got[i])
          assert.equal(math.type(want[i]), math.type(got[i]))
        end
      end

      it("returns one value per format, in order, as file:read", function()
        a:write("head\r\n12345tail\nrest")
        same(pack("head", "123", "45tail\n", "re"), pack(c:read("l", 3, "L", 2)))
        assert.equal("st", c:read())
      end)

      it("returns every byte value read one at a time, and \"\" for " ..
         "empty lines and a count of 0", function()
        local all = {}
        for b = 0, 255 do all[#all + 1] = string.char(b) end
        a:write(table.concat(all), "\r\n\n")
        for b = 0, 255 do assert.equal(string.char(b), c:read(1)) end
        same(pack("", "", ""), pack(c:read("l", 0, "l")))
      end)

      it("waits for every format, the bytes arriving in pieces", function()
        local t = sr.spawn(function()
          for _, piece in ipairs({ "*", "1", "2\r", "\n$", "3\r\nab", "c\r\n" }) do
            a:write(piece)
            sr.sleep(0.01)
          end
        end)
        same(pack("*", 12, ""), pack(c:read(1, "n", "l")))
        same(pack("$", 3, "", "abc", ""), pack(c:read(1, "n", "l", 3, "l")))
        t:join(5)
      end)

      it("waits for every format inside a task", function()
        in_task(function()
          local t = sr.spawn(function()
            a:write("7 ")
            sr.sleep(0.02)
            a:write("8\n")
          end)
          same(pack(7, 8), pack(c:read("n", "n")))
          t:join(5)
        end)
      end)

      it("reads numbers with \"n\" as Lua's file:read does", function()
        a:write("42 -7 +3 0x1F 3.25 -1e3 0x.8p1 .5 007\n")
        same(pack(42, -7, 3, 31, 3.25, -1000.0, 1.0, 0.5, 7),
          pack(c:read("n", "n", "n", "n", "n", "n", "n", "n", "n")))
        assert.equal("", c:read("l")) -- the LF after the last numeral
      end)

      it("converts long and edge-case numerals as Lua does", function()
        a:write("0 -0 123456789012345678 9223372036854775807 " ..
                "123456789012345678901 0X10 1E2 5.\n")
        same(pack(0, 0, 123456789012345678, math.maxinteger,
                  123456789012345678901.0, 16, 100.0, 5.0),
          pack(c:read("n", "n", "n", "n", "n", "n", "n", "n")))
      end)

      it("skips white space before a number, line ends included", function()
        a:write(" \t\r\n 12\r\n\n 34x")
        same(pack(12, 34, "x"), pack(c:read("n", "n", 1)))
      end)

      it("accepts \"*n\", as LuaSocket-era code spells formats", function()
        a:write("5\n")
        assert.equal(5, c:read("*n"))
      end)

      it("returns nil, \"not a number\", \"EPROTO\" and leaves the bytes",
        function()
          a:write("abc\n")
          H.assert_fail_msg("not a number", "EPROTO", c:read("n"))
          assert.equal("abc", c:read("l"))
        end)

      it("fails a malformed numeral and leaves it unread", function()
        a:write("1e+\n0x\n")
        H.assert_fail_msg("not a number", "EPROTO", c:read("n"))
        assert.equal("1e+", c:read("l"))
        H.assert_fail_msg("not a number", "EPROTO", c:read("n"))
        assert.equal("0x", c:read("l"))
      end)

      it("fails a numeral longer than 200 bytes", function()
        local long = string.rep("1", 201)
        a:write(long .. "\n")
        H.assert_fail_msg("not a number", "EPROTO", c:read("n"))
        assert.equal(long, c:read("l"))
      end)

      it("returns the values read before a failing format, then the failure",
        function()
          a:write("$x\n")
          same(pack("$", nil, "not a number", "EPROTO"), pack(c:read(1, "n", "l")))
          assert.equal("x", c:read("l"))
        end)

      it("reads a number ended by end of file", function()
        a:write("  12")
        a:close()
        same(pack(12, nil, "end of file", "EOF"), pack(c:read("n", "n")))
      end)

      it("returns nil, EOF for \"n\" at end of file after white space", function()
        a:write(" \n ")
        a:shutdown()
        H.assert_eof(c:read("n"))
      end)

      it("times out between formats, keeping what it read, and stays usable",
        function()
          c:settimeout(0.05)
          a:write("first\n")
          same(pack("first", nil, "timeout", "ETIMEDOUT"), pack(c:read("l", "l")))
          a:write("second\n")
          assert.equal("second", c:read("l"))
        end)

      it("takes more formats than the C stack's minimum space", function()
        local n = 60
        a:write(string.rep("9 ", n) .. "\n")
        local fmts = {}
        for i = 1, n do fmts[i] = "n" end
        local got = pack(c:read(table.unpack(fmts)))
        assert.equal(n, got.n)
        for i = 1, n do assert.equal(9, got[i]) end
      end)

      it("returns nil, \"socket is closed\" when closed between formats",
        function()
          local t = sr.spawn(function()
            sr.sleep(0.02)
            c:close()
          end)
          a:write("one\n")
          same(pack("one", nil, "socket is closed", "EBADF"), pack(c:read("l", "l")))
          t:join(5)
        end)

      it("iterates several formats with s:lines, ending at a failure",
        function()
          a:write("1 one\n2 two\nx three\n")
          a:close()
          local got = {}
          for n, name in c:lines("n", "l") do got[#got + 1] = n .. "=" .. name end
          assert.same({ "1= one", "2= two" }, got)
        end)

      it("gives s:lines' last values though a later format fails, as \z
          file:lines does", function()
        a:write("a\nb\nc\n")
        a:close()
        local got = {}
        for x, y in c:lines("l", "l") do got[#got + 1] = x .. "," .. tostring(y) end
        assert.same({ "a,b", "c,nil" }, got)
      end)

      it("ends with EBADF when a finalizer closes the socket between \z
          formats", function()
        local line = string.rep("x", 4000) -- long: each result allocates
        a:write(string.rep(line .. "\n", 16))
        assert.equal(line, c:read("l"))
        sr.sleep(0.05) -- the other fifteen are buffered now
        local arm, closed = finalizers_closing(c)
        arm(true)
        local fmts = {}
        for k = 1, 15 do fmts[k] = "l" end
        local got = table.pack(c:read(table.unpack(fmts)))
        arm(false)
        assert.is_true(closed(), "no finalizer ran during the read")
        local n = got.n
        for k = 1, n - 3 do assert.equal(line, got[k]) end
        H.assert_closed(table.unpack(got, n - 2, n))
      end)
    end)

    -- name; what the peer writes; the format; what each read gives in turn
    local line_cases = {
      { "reads a line without its LF with \"l\"",
        "one\ntwo\n", "l", { "one", "two" } },
      { "reads a line without its CRLF with \"l\"",
        "one\r\ntwo\r\n", "l", { "one", "two" } },
      { "keeps a lone CR inside a line",
        "a\rb\n", "l", { "a\rb" } },
      { "reads an empty line",
        "\n\r\nx\n", "l", { "", "", "x" } },
      { "reads a line with its end with \"L\"",
        "one\ntwo\r\n", "L", { "one\n", "two\r\n" } },
    }
    for _, case in ipairs(line_cases) do
      local name, sent, format, reads = table.unpack(case)
      it(name, function()
        a:write(sent)
        for _, want in ipairs(reads) do assert.equal(want, c:read(format)) end
      end)
    end

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
        H.assert_eof(c:read(0))
      end)

    it("gives partial data at end of file, then nil, EOF (\"l\")", function()
      a:write("line\npartial")
      a:close()
      assert.equal("line", c:read("l"))
      assert.equal("partial", c:read("l"))
      H.assert_eof(c:read("l"))
      H.assert_eof(c:read("l"))
    end)

    it("gives partial data at end of file, then nil, EOF (n)", function()
      a:write("short")
      a:close()
      assert.equal("short", c:read(100))
      H.assert_eof(c:read(100))
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
        H.assert_eof(c:read())
      end)

    it("gives partial data at end of file, then nil, EOF (\"L\")", function()
      a:write("no newline")
      a:close()
      assert.equal("no newline", c:read("L"))
      H.assert_eof(c:read("L"))
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
      H.raises(function() return c:read("x") end,
        "bad argument #1 to 'read'", "invalid format")
      H.raises(function() return c:read("") end,
        "bad argument #1 to 'read'", "invalid format")
      H.raises(function() return c:read(-1) end, "bad argument #1 to 'read'")
      H.raises(function() return c:read({}) end, "bad argument #1 to 'read'")
      H.raises(function() return c:read(1.5) end, "bad argument #1 to 'read'")
    end)

    it("raises for an invalid format in a later position, naming it",
      function()
        a:write("x\n")
        H.raises(function() return c:read("l", "q") end,
          "bad argument #2 to 'read'", "invalid format")
      end)

    it("returns nil, \"line too long\", \"ENOBUFS\" past setmaxline",
      function()
        assert.is_true(c:setmaxline(16))
        a:write(string.rep("x", 100))
        H.assert_fail_msg("line too long", "ENOBUFS", c:read("l"))
        -- the bytes are still there for a counted read
        assert.equal(string.rep("x", 100), c:read(100))
        a:write("short\n")
        assert.equal("short", c:read("l"))
      end)

    it("judges a line against setmaxline by its length, whatever packets bring it",
      function()
        assert.is_true(c:setmaxline(4))
        a:write("abcdefghij\n") -- its end came with it: still too long
        H.assert_fail_msg("line too long", "ENOBUFS", c:read("l"))
        assert.equal("abcdefghij\n", c:read(11))
        a:write("abc\r") -- "abc" and a "\r" that may start its end
        sr.sleep(0.05)
        a:write("\n")
        assert.equal("abc", c:read("l"))
        a:write("abcd\n") -- exactly the limit
        assert.equal("abcd", c:read("l"))
      end)

    it("gives EOF for read(0) once the peer has closed, before any read",
      function()
        a:close()
        sr.sleep(0.05)
        H.assert_eof(c:read(0))
      end)

    it("fails at once, with ENOBUFS, for a count above the 4 GiB a " ..
       "socket can hold", function()
        a:write("x")
        H.assert_fail("ENOBUFS", c:read(1 << 33))
        assert.equal("x", c:read(1))
      end)

    it("takes a maxline above the 4 GiB a socket can hold as no limit",
      function()
        assert.is_true(c:setmaxline(1 << 40))
        a:write(string.rep("y", 70000) .. "\n")
        assert.equal(70000, #c:read("l"))
      end)

    it("raises for a non-positive maxline", function()
      H.raises(function() return c:setmaxline(0) end,
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
        H.assert_eof(c:read("l"))
      end)
    end)
  end)
end

-- ------------------------------------------------------------------------

describe("the first read of an accepted connection", function()
  -- It reads what the client sent before the accept at once, into the
  -- loop's read buffer, which the handler then reads in place.
  it("keeps what it left unread while other connections' bytes arrive",
    function()
      local l, port = H.listener()
      local c2 = assert(sr.connect("127.0.0.1", port))
      local a2 = assert(l:accept())
      local other = sr.spawn(function() return a2:read("l") end) -- waits
      local c1 = assert(sr.connect("127.0.0.1", port))
      assert(c1:write("first\nsecond-part"))
      sr.sleep(0.03) -- those bytes are there before the accept
      local a1 = assert(l:accept())
      local t = sr.spawn(function()
        local first = a1:read("l") -- "second-part" left in the buffer
        sr.sleep(0.15)             -- while the other connection reads
        return first, a1:read("l")
      end)
      assert(c2:write(string.rep("y", 5000) .. "\n"))
      assert.equal(string.rep("y", 5000), other:join(5))
      assert(c1:write("-rest\n"))
      local first, second = t:join(5)
      assert.equal("first", first)
      assert.equal("second-part-rest", second)
      for _, s in ipairs { c1, c2, a1, a2 } do s:close() end
    end)

  it("reports the end of a connection closed before any read", function()
    local res
    local srv = assert(sr.listen("127.0.0.1", 0, function(conn)
      sr.sleep(0.05) -- the client has sent its bytes and closed
      local line = conn:read("l")
      res = { line, select(3, conn:read("l")) }
    end))
    local c = assert(sr.connect("127.0.0.1", select(2, srv:getsockname())))
    assert(c:write("last line\n"))
    c:close()
    H.wait_for(function() return res ~= nil end)
    assert.same({ "last line", "EOF" }, res)
    srv:close()
  end)
end)

-- ------------------------------------------------------------------------
describe("a peer that sends faster than its reader reads", function()
  -- Each read then fills the loop's buffer, and the next one reads the
  -- kernel at once rather than wait on the poller first; a few at most,
  -- then the reader waits like any other and the other tasks run.
  local FLOOD = [[
    local sr = require "sockrun"
    local c = assert(sr.connect("127.0.0.1", math.tointeger(arg[1])))
    local block = string.rep("x", 65536)
    for _ = 1, 512 do if not c:write(block) then break end end -- 32 MiB
    c:close()
  ]]

  -- The accepted end of a connection from a process sending FLOOD; a
  -- receive window of a few blocks, so that the kernel holds more than a
  -- buffer's worth each time the reader comes back.
  local function flooded()
    local l, port = H.listener()
    assert(l:setsockopt("rcvbuf", MiB)) -- what an accept inherits
    H.spawn_script(FLOOD, tostring(port))
    local a = assert(l:accept())
    H.defer(function() a:close() end)
    a:settimeout(20)
    return a
  end

  -- Some CPU per block, without a wait: slower than the sender.
  local function work()
    local t = os.clock() + 0.0002
    repeat until os.clock() >= t
  end

  it("leaves the other tasks their turns while it keeps the reader busy",
    function()
      local a = flooded()
      local ticks, ticking = 0, true
      local ticker = sr.spawn(function()
        while ticking do sr.sleep(0.002); ticks = ticks + 1 end
      end)
      local got, full, at_1, at_31 = 0, 0, nil, nil
      while true do
        local data = a:read() -- whatever has come, up to a buffer's worth
        if not data then break end
        got = got + #data
        if #data == 65536 then full = full + 1 end
        if got >= MiB and not at_1 then at_1 = ticks end
        if got >= 31 * MiB and not at_31 then at_31 = ticks end
        work()
      end
      ticking = false
      ticker:join(5)
      assert.equal(32 * MiB, got)
      assert.is_true(full >= 256, "reads that filled the buffer: " .. full)
      -- 30 MiB at >= 0.2 ms per 64 KiB is >= 96 ms: some 48 ticks when
      -- the ticker gets its turns, none when the reader never waits
      assert.is_true(at_31 - at_1 >= 10, "ticks: " .. (at_31 - at_1))
    end)

  it("tells a second reader the socket is busy between the reads ahead",
    function()
      local a = flooded()
      local first = sr.spawn(function()
        local got = 0
        while true do
          local data = a:read()
          if not data then return got end
          got = got + #data
          work()
        end
      end)
      for _ = 1, 5 do -- the first waits, for its turn: the bytes are its
        sr.sleep(0.01)
        H.raises(function() return a:read() end, "busy")
        H.raises(function() return a:read(10) end, "busy")
      end
      assert.equal(32 * MiB, first:join(20))
    end)
end)

-- ------------------------------------------------------------------------
describe("connections accepted one after another", function()
  -- A connection closed after its first read had to wait leaves its libuv
  -- handle for the next connection on the same descriptor number
  -- (socket.c, kept handles); each must still get its own bytes only.
  it("each get their own bytes, many clients reconnecting at once", function()
    local srv, port = H.server(function(conn)
      local line = conn:read("l")
      if line then conn:write(line, "\n") end
    end)
    local clients, replies = {}, {}
    for i = 1, 20 do
      clients[i] = sr.spawn(function()
        for j = 1, 15 do
          local c, err, code = sr.connect("127.0.0.1", port)
          if not c then error(tostring(err) .. " " .. tostring(code)) end
          sr.sleep(0.002) -- the server's first read finds nothing yet
          local msg = i .. "." .. j
          assert(c:write(msg, "\n"))
          local ok = c:read("l") == msg -- (then the index: others ran)
          replies[#replies + 1] = ok
          c:close()
        end
        return true
      end)
    end
    for i = 1, 20 do assert(clients[i]:join(20)) end
    assert.equal(300, #replies)
    for k = 1, 300 do assert.is_true(replies[k]) end
    srv:close()
  end)

  it("serve a connection on a number a connect took in between", function()
    local srv, port = H.server(H.echo)
    for round = 1, 30 do
      local a = assert(sr.connect("127.0.0.1", port))
      sr.sleep(0.002)
      assert(a:write("a", round, "\n"))
      assert.equal("a" .. round, a:read("l"))
      a:close()
      sr.sleep(0.005) -- the server's side closes, its handle kept
      -- a client and a server-side connection now take those numbers
      -- in the other order
      local b = assert(sr.connect("127.0.0.1", port))
      local c = assert(sr.connect("127.0.0.1", port))
      sr.sleep(0.002)
      assert(c:write("c", round, "\n"))
      assert(b:write("b", round, "\n"))
      assert.equal("b" .. round, b:read("l"))
      assert.equal("c" .. round, c:read("l"))
      b:close()
      c:close()
    end
    srv:close()
  end)
end)


describe("s:lines", function()
  it("iterates over lines until end of file", on_pair("tcp", function(c, a)
    a:write("a\nb\r\n\nlast")
    a:close()
    local got = {}
    for line in c:lines() do got[#got + 1] = line end
    assert.same({ "a", "b", "", "last" }, got)
  end))

  it("takes a format", on_pair("tcp", function(c, a)
    a:write("a\nb\n")
    a:close()
    local got = {}
    for line in c:lines("L") do got[#got + 1] = line end
    assert.same({ "a\n", "b\n" }, got)
  end))

  it("takes a count", on_pair("unix", function(c, a)
    a:write("abcdefg")
    a:close()
    local got = {}
    for chunk in c:lines(3) do got[#got + 1] = chunk end
    assert.same({ "abc", "def", "g" }, got)
  end))

  it("ends at a read error", on_pair("tcp", function(c, a)
    c:settimeout(0.05)
    a:write("one\n")
    local got = {}
    for line in c:lines() do got[#got + 1] = line end
    assert.same({ "one" }, got) -- then the timeout ends the loop
  end))

  it("raises for an invalid format on the first call",
    on_pair("tcp", function(c, a)
      H.raises(function() return c:lines("x")() end, "invalid format")
    end))

  it("works inside a task", on_pair("tcp", function(c, a)
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
  end))
end)

-- ------------------------------------------------------------------------

describe("s:write", function()
  it("writes several strings in order (gather)", on_pair("tcp", function(c, a)
    assert.equal(c, c:write("a", "bc", "", "def", "\n"))
    assert.equal("abcdef", a:read("l"))
  end))

  it("writes many strings in one call", on_pair("tcp", function(c, a)
    local parts = {}
    for i = 1, 100 do parts[i] = tostring(i % 10) end
    c:write(table.unpack(parts))
    assert.equal(table.concat(parts), a:read(100))
  end))

  it("writes numbers as file:write does", on_pair("tcp", function(c, a)
    c:write(42, " ", 1.5, "\n")
    assert.equal("42 1.5", a:read("l"))
  end))

  it("returns EBADF, writing nothing, when a finalizer closes the socket " ..
     "while its numbers become strings", on_pair("tcp", function(c, a)
    local arm, closed = finalizers_closing(c)
    local nums = {}
    for k = 1, 2000 do nums[k] = k + 0.5 end -- each one a new string
    arm(true)
    local ok, msg, code = c:write(table.unpack(nums))
    arm(false)
    assert.is_true(closed(), "no finalizer ran during the write")
    H.assert_closed(ok, msg, code)
    a:settimeout(5)
    H.assert_eof(a:read(1))
  end))

  it("returns the socket so that calls chain", on_pair("unix", function(c, a)
    local r = c:write("a"):write("b"):write("c\n")
    assert.equal(c, r)
    assert.equal("abc", a:read("l"))
  end))

  it("returns the socket when given nothing to write",
    on_pair("tcp", function(c, a)
      assert.equal(c, c:write())
    end))

  it("returns the socket and sends nothing for empty strings, in a task too",
    on_pair("unix", function(c, a)
      assert.equal(c, c:write(""))
      H.in_task(function()
        assert.equal(c, c:write(""))
        assert.equal(c, c:write("", "", ""))
        assert.equal(c, c:write("", "x\n"))
      end)
      assert.equal("x", a:read("l"))
    end))

  it("writes more strings than fit its stack array, past the high-water mark",
    on_pair("tcp", function(c, a)
      local parts, want = {}, 0
      for i = 1, 40 do
        parts[i] = string.rep(string.char(64 + i % 26), 65536)
        want = want + #parts[i]
      end
      local got = 0
      local reader = sr.spawn(function()
        sr.sleep(0.05) -- so that the write meets backpressure
        while got < want do
          local d = assert(a:read())
          got = got + #d
        end
      end)
      assert.equal(c, c:write(table.unpack(parts)))
      reader:join(10)
      assert.equal(want, got)
    end))

  it("raises for an argument that is not a string or a number",
    on_pair("tcp", function(c, a)
      H.raises(function() return c:write({}) end, "bad argument #1 to 'write'")
      H.raises(function() return c:write("ok", true) end,
        "bad argument #2 to 'write'")
      H.raises(function() return c:write("ok", nil) end,
        "bad argument #2 to 'write'")
    end))

  it("delivers an 8 MiB write intact to a reader in another task",
    on_pair("tcp", function(c, a)
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
    end))

  it("delivers an 8 MiB write from a task to a reader at top level",
    on_pair("unix", function(c, a)
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
    end))

  it("waits above the high-water mark and times out with ETIMEDOUT",
    on_pair("tcp", function(c, a)
      c:settimeouts(nil, nil, 0.1)
      local chunk = string.rep("w", 256 * 1024)
      local ok, msg, code
      for _ = 1, 400 do -- at most 100 MiB, far past any socket buffer
        ok, msg, code = c:write(chunk)
        if not ok then break end
      end
      H.assert_timeout(ok, msg, code)
    end))

  it("returns nil, msg, code when the peer reset the connection",
    on_pair("tcp", function(c, a)
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
    end))

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
    ]], "", { timeout = 10 })
    assert.equal(0, status, err)
    assert.matches("write\tnil\tE[A-Z]+", out)
    assert.matches("alive", out)
  end)

  it("writes inside a task", on_pair("tcp", function(c, a)
    in_task(function()
      assert.equal(c, c:write("x", 1, "y\n"))
      assert.equal("x1y", a:read("l"))
    end)
  end))
end)

-- ------------------------------------------------------------------------

describe("s:shutdown", function()
  it("makes the peer read end of file after the data sent",
    on_pair("tcp", function(c, a)
      c:write("before shutdown\n")
      assert.is_true(c:shutdown())
      assert.equal("before shutdown", a:read("l"))
      H.assert_eof(a:read("l"))
    end))

  it("leaves the half-closed socket readable", on_pair("tcp", function(c, a)
    c:write("question\n")
    assert.is_true(c:shutdown())
    assert.equal("question\n", a:read("a"))
    a:write("answer\n")
    a:close()
    assert.equal("answer", c:read("l"))
    H.assert_eof(c:read("l"))
  end))

  it("makes a later write return nil, msg, \"EPIPE\"",
    on_pair("tcp", function(c, a)
      assert.is_true(c:shutdown())
      H.assert_fail("EPIPE", c:write("too late"))
      assert.equal("", a:read("a"))
    end))

  it("is harmless when called twice", on_pair("unix", function(c, a)
    assert.is_true(c:shutdown())
    assert.is_true(c:shutdown())
    assert.equal("", a:read("a"))
  end))

  it("flushes a queued large write before the end of file",
    on_pair("tcp", function(c, a)
      local big = string.rep("s", 4 * MiB)
      local reader = sr.spawn(function() return a:read("a") end)
      c:write(big)
      assert.is_true(c:shutdown())
      local got = reader:join(20)
      assert.equal(#big, #(got or ""))
    end))

  it("returns nil, msg, code on an unconnected socket", function()
    local s = assert(sr.socket("inet", "stream"))
    H.assert_fail(nil, s:shutdown())
    s:close()
  end)

  it("works inside a task", on_pair("tcp", function(c, a)
    in_task(function()
      c:write("bye")
      assert.is_true(c:shutdown())
      assert.equal("bye", a:read("a"))
      H.assert_fail("EPIPE", c:write("x"))
    end)
  end))
end)

-- ------------------------------------------------------------------------

describe("one reader per socket", function()
  it("raises a \"busy\" error for a second task reading",
    on_pair("tcp", function(c, a)
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
    end))

  it("raises a \"busy\" error at top level while a task reads",
    on_pair("tcp", function(c, a)
      local first = sr.spawn(function() return c:read("l") end)
      H.raises(function() return c:read("l") end, "busy")
      a:write("still first\n")
      assert.equal("still first", first:join(5))
    end))

  it("lets another task read once the first is done",
    on_pair("tcp", function(c, a)
      a:write("1\n2\n")
      local t1 = sr.spawn(function() return c:read("l") end)
      assert.equal("1", t1:join(5))
      local t2 = sr.spawn(function() return c:read("l") end)
      assert.equal("2", t2:join(5))
    end))

  it("frees the socket for another reader when the reader is cancelled",
    on_pair("tcp", function(c, a)
      local first = sr.spawn(function() return c:read("l") end)
      assert.equal("waiting", first:status())
      assert.is_true(first:cancel())
      assert.equal("cancelled", first:status())
      a:write("for the second\n")
      local second = sr.spawn(function() return c:read("l") end)
      assert.equal("for the second", second:join(5))
    end))

  it("frees the socket for another reader after a timeout",
    on_pair("tcp", function(c, a)
      local first = sr.spawn(function()
        c:settimeout(0.02)
        return c:read("l")
      end)
      assert.same({ nil, "timeout", "ETIMEDOUT" }, { first:join(5) })
      c:settimeout(5)
      a:write("next\n")
      assert.equal("next", c:read("l"))
    end))

  it("allows reading in one task while another writes",
    on_pair("tcp", function(c, a)
      local reader = sr.spawn(function() return c:read("l") end)
      local writer = sr.spawn(function() return c:write("ping\n") == c end)
      assert.is_true(writer:join(5))
      assert.equal("ping", a:read("l"))
      a:write("pong\n")
      assert.equal("pong", reader:join(5))
    end))
end)
