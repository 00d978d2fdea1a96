-- Unix domain sockets: stream sockets through sr.listen(path) /
-- sr.connect(path) and the raw calls, path cleanup, errors for missing and
-- over-long paths, the Linux abstract namespace ("@name"), and unix
-- datagram sockets (bound, connected, and unbound senders).
local H = require "helper"
local sr = H.sr

-- Helpers local to this file ---------------------------------------------

local function exists(path)
  local f = io.open(path, "r")
  if f then f:close() end
  -- a socket file cannot be opened, but the error says it is there
  local _, err = io.open(path, "r")
  return f ~= nil or (err ~= nil and not err:find("No such file", 1, true))
end

local abstract_n = 0
local function abstract()
  abstract_n = abstract_n + 1
  return string.format("@sockrun-spec-%d-%d", H.pid(), abstract_n)
end

-- A unix datagram socket bound to a fresh path, with a timeout.
local function dgram(path)
  local s = assert(sr.socket("unix", "dgram"))
  path = path or H.tmppath("dgram")
  assert.is_true(s:bind(path))
  s:settimeout(5)
  return s, path
end

-- Binding a second unix socket of `kind` to a path in use gives EADDRINUSE.
local function check_bind_in_use(kind)
  local path = H.tmppath()
  local a = assert(sr.socket("unix", kind))
  assert.is_true(a:bind(path))
  local b = assert(sr.socket("unix", kind))
  H.assert_fail("EADDRINUSE", b:bind(path))
  a:close()
  b:close()
end

-- Connecting a unix socket of `kind` to a missing path gives ENOENT.
local function check_connect_missing(kind)
  local s = assert(sr.socket("unix", kind))
  H.assert_fail("ENOENT", s:connect(H.tmppath("missing")))
  s:close()
end

after_each(H.assert_clean)
-- A test that failed half-way must not leave its sockets to the next one.
after_each(H.collect)
after_each(H.run_deferred) -- removes the paths

-- ------------------------------------------------------------------------

describe("unix stream sockets with sr.listen and sr.connect", function()
  it("echo over a path", function()
    local path = H.tmppath()
    local srv = assert(sr.listen(path, H.echo))
    local c = assert(sr.connect(path))
    c:settimeout(5)
    assert.equal("unix", (c:family()))
    assert.equal("hello unix", c:write("hello unix\n"):read("l"))
    assert.equal("again", c:write("again\n"):read("l"))
    c:close()
    srv:close()
  end)

  it("pass the peer path (\"\" for an unnamed peer) to the handler",
    function()
      local path = H.tmppath()
      local seen
      local srv = assert(sr.listen(path, function(conn, peer)
        seen = peer
        conn:write("hi\n")
      end))
      local c = assert(sr.connect(path))
      c:settimeout(5)
      assert.equal("hi", c:read("l"))
      assert.equal("", seen)
      c:close()
      srv:close()
    end)

  it("serve several clients at once", function()
    local path = H.tmppath()
    local srv = assert(sr.listen(path, H.echo))
    local clients = {}
    for i = 1, 5 do
      clients[i] = assert(sr.connect(path))
      clients[i]:settimeout(5)
    end
    for i = 5, 1, -1 do
      local reply = clients[i]:write("client ", i, "\n"):read("l")
      assert.equal("client " .. i, reply)
    end
    for i = 1, 5 do clients[i]:close() end
    srv:close()
  end)

  it("remove the path when the listening socket closes", function()
    local path = H.tmppath()
    local srv = assert(sr.listen(path, H.echo))
    assert.is_true(exists(path))
    srv:close()
    assert.is_false(exists(path))
  end)

  it("sr.listen returns nil, msg, EADDRINUSE for a path in use", function()
    local path = H.tmppath()
    local srv = assert(sr.listen(path, H.echo))
    H.assert_fail("EADDRINUSE", sr.listen(path, H.echo))
    srv:close()
  end)

  it("sr.connect returns nil, msg, ENOENT for a missing path", function()
    H.assert_fail("ENOENT", sr.connect(H.tmppath("missing")))
  end)

  it("sr.connect returns nil, msg, ECONNREFUSED when nobody listens",
    function()
      local path = H.tmppath()
      local bound = assert(sr.socket("unix", "stream"))
      assert(bound:bind(path))
      H.assert_fail("ECONNREFUSED", sr.connect(path))
      bound:close()
    end)

  it("sr.connect takes opts.timeout", function()
    local path = H.tmppath()
    local srv = assert(sr.listen(path, H.echo))
    local c = assert(sr.connect(path, { timeout = 5 }))
    assert.equal("t", c:write("t\n"):read("l"))
    c:close()
    srv:close()
  end)

  it("raise for a path that is too long", function()
    local long = "/tmp/" .. string.rep("x", 200)
    H.raises(function() return sr.listen(long, H.echo) end, "too long")
    H.raises(function() return sr.connect(long) end, "too long")
    -- sun_path holds 108 bytes: 107 and the zero that ends a path
    H.raises(function() return sr.listen("/tmp/" .. string.rep("x", 103), H.echo) end,
      "too long")
    H.raises(function() return sr.listen("@" .. string.rep("x", 108), H.echo) end,
      "too long")
  end)

  it("take the longest names sun_path holds: a 107-byte path, a 108-byte abstract name",
    function()
      local path = H.tmppath()
      path = path .. string.rep("p", 107 - #path)
      local abstract = "@" .. string.rep("a", 101) .. H.pid() % 100000
      abstract = abstract .. string.rep("a", 108 - #abstract)
      for _, name in ipairs({ path, abstract }) do
        local srv = assert(sr.listen(name, H.echo))
        assert.equal(name, srv:getsockname())
        local c = assert(sr.connect(name))
        assert.equal("far", c:write("far\n"):read("l"))
        c:close()
        srv:close()
      end
      os.remove(path)
    end)

  it("sr.listen takes the place of a stale socket file, not of a live server or a file",
    function()
      local path = H.tmppath()
      local bound = assert(sr.socket("unix", "stream"))
      assert(bound:bind(path)) -- bound, never listened: its file stays
      bound:close()
      local srv = assert(sr.listen(path, H.echo))
      local c = assert(sr.connect(path))
      assert.equal("x", c:write("x\n"):read("l"))
      c:close()
      H.assert_fail("EADDRINUSE", sr.listen(path, H.echo)) -- it is live
      srv:close()
      local file = H.tmppath("file")
      local f = assert(io.open(file, "w"))
      f:write("data")
      f:close()
      H.assert_fail("EADDRINUSE", sr.listen(file, H.echo))
      assert.equal("data", H.slurp(file))
    end)

  it("raise for a bad path or handler", function()
    H.raises(function() return sr.connect("") end, "bad argument #1")
    H.raises(function() return sr.listen("", H.echo) end, "bad argument #1")
    H.raises(function() return sr.listen(H.tmppath(), "echo") end,
      "bad argument #2 to 'listen'")
    H.raises(function() return sr.connect(H.tmppath(), "opts") end,
      "bad argument #2 to 'connect'")
  end)

  it("work in the abstract namespace with \"@name\"", function()
    local name = abstract()
    local srv = assert(sr.listen(name, H.echo))
    assert.equal(name, (srv:getsockname()))
    assert.is_false(exists(name))
    local c = assert(sr.connect(name))
    c:settimeout(5)
    assert.equal(name, (c:getpeername()))
    assert.equal("abstract", c:write("abstract\n"):read("l"))
    c:close()
    srv:close()
    H.assert_fail("ECONNREFUSED", sr.connect(name))
  end)

  it("work inside a task", function()
    local path = H.tmppath()
    H.in_task(function()
      local srv = assert(sr.listen(path, H.echo))
      local c = assert(sr.connect(path))
      c:settimeout(5)
      assert.equal("in task", c:write("in task\n"):read("l"))
      c:close()
      srv:close()
      H.assert_fail("ENOENT", sr.connect(path))
    end)
  end)
end)

-- ------------------------------------------------------------------------

describe("unix stream sockets with the raw calls", function()
  it("bind, listen, accept and connect", function()
    local path = H.tmppath()
    local l = assert(sr.socket("unix", "stream"))
    assert.is_true(l:bind(path))
    assert.is_true(l:listen())
    assert.equal(path, (l:getsockname()))
    assert.equal("sockrun.socket(unix, " .. path .. ", listening)",
      tostring(l))
    local c = assert(sr.socket("unix", "stream"))
    assert.equal("sockrun.socket(unix, unnamed, open)", tostring(c))
    c:settimeout(5)
    assert.is_true(c:connect(path))
    assert.equal(path, (c:getpeername()))
    assert.equal("sockrun.socket(unix, unnamed, connected)", tostring(c))
    local a, peer = l:accept()
    assert.is_userdata(a)
    assert.equal("", peer)
    a:settimeout(5)
    c:write("raw\n")
    assert.equal("raw", a:read("l"))
    a:write("back\n")
    assert.equal("back", c:read("l"))
    a:close()
    c:close()
    l:close()
    assert.is_false(exists(path))
  end)

  -- A listener that accepts nothing, with its backlog full: connects to it
  -- get EAGAIN from the kernel (a non-blocking unix connect does not wait).
  -- libuv takes one connection off the backlog as soon as the loop runs
  -- (and no more until it is accepted), so the backlog is filled, the loop
  -- run, and the backlog filled again. Returns the listener, its path and
  -- a function that closes them all.
  local function full_unix_listener()
    local path = H.tmppath()
    local l = assert(sr.socket("unix", "stream"))
    assert(l:bind(path))
    assert(l:listen(0))
    local fillers = {}
    local function close_all()
      for _, c in ipairs(fillers) do c:close() end
      l:close()
    end
    local function fill()
      for _ = 1, 16 do
        local c = assert(sr.socket("unix", "stream"))
        fillers[#fillers + 1] = c
        c:settimeout(0)
        if not c:connect(path) then return end
      end
      error("the backlog never filled")
    end
    fill()
    sr.sleep(0.02)
    fill()
    return l, path, close_all
  end

  it("connect to a full backlog waits, and connects once there is room",
    function()
      local l, path, close_all = full_unix_listener()
      local accepted = sr.spawn(function()
        sr.sleep(0.05)
        return assert(l:accept()) -- makes room
      end)
      local c = assert(sr.socket("unix", "stream"))
      c:settimeout(5)
      local t0 = sr.now()
      assert.is_true(c:connect(path))
      assert.is_true(sr.now() - t0 >= 0.04)
      accepted:join():close()
      c:close()
      close_all()
    end)

  it("connect to a backlog that stays full ends with ETIMEDOUT", function()
    local _, path, close_all = full_unix_listener()
    local c = assert(sr.socket("unix", "stream"))
    c:settimeout(0.1)
    local t0 = sr.now()
    H.assert_timeout(c:connect(path))
    assert.is_true(sr.now() - t0 >= 0.09)
    c:close()
    close_all()
  end)

  it("accept returns the peer's path when the client is bound", function()
    local path, cpath = H.tmppath("srv"), H.tmppath("cli")
    local l = assert(sr.socket("unix", "stream"))
    assert(l:bind(path))
    assert(l:listen())
    local c = assert(sr.socket("unix", "stream"))
    assert.is_true(c:bind(cpath))
    assert(c:connect(path))
    local a, peer = l:accept()
    assert.equal(cpath, peer)
    assert.equal(cpath, (a:getpeername()))
    a:close()
    c:close()
    l:close()
  end)

  it("remove the path of a forgotten listener when it is collected",
    function()
      local path = H.tmppath()
      do
        local l = assert(sr.socket("unix", "stream"))
        assert(l:bind(path))
        assert(l:listen())
      end
      assert.is_true(exists(path))
      collectgarbage()
      collectgarbage()
      H.settle()
      assert.is_false(exists(path))
    end)

  it("bind fails with EADDRINUSE on an existing path", function()
    check_bind_in_use("stream")
  end)

  it("connect returns nil, msg, ENOENT for a missing path", function()
    check_connect_missing("stream")
  end)

  it("raises for a path that is too long", function()
    local s = assert(sr.socket("unix", "stream"))
    local long = "/tmp/" .. string.rep("y", 120)
    H.raises(function() return s:bind(long) end,
      "bad argument #1 to 'bind'", "too long")
    H.raises(function() return s:connect(long) end,
      "bad argument #1 to 'connect'", "too long")
    s:close()
  end)

  it("raises for an empty path or one with a zero byte", function()
    local s = assert(sr.socket("unix", "stream"))
    H.raises(function() return s:bind("") end, "bad argument #1 to 'bind'")
    H.raises(function() return s:bind("/tmp/a\0b") end,
      "bad argument #1 to 'bind'")
    H.raises(function() return s:connect({}) end,
      "bad argument #1 to 'connect'")
    s:close()
  end)

  it("bind and connect in the abstract namespace", function()
    local name = abstract()
    local l = assert(sr.socket("unix", "stream"))
    assert.is_true(l:bind(name))
    assert.is_true(l:listen())
    local c = assert(sr.socket("unix", "stream"))
    assert.is_true(c:connect(name))
    local a = assert(l:accept())
    c:write("@")
    assert.equal("@", a:read(1))
    a:close()
    c:close()
    l:close()
  end)

  it("accept waits inside a task", function()
    local path = H.tmppath()
    local l = assert(sr.socket("unix", "stream"))
    assert(l:bind(path))
    assert(l:listen())
    local t = sr.spawn(function()
      l:settimeout(5)
      local a, peer = assert(l:accept())
      local line = a:read("l")
      a:close()
      return peer, line
    end)
    local c = assert(sr.connect(path))
    c:write("to the task\n")
    local peer, line = t:join(5)
    assert.equal("", peer)
    assert.equal("to the task", line)
    c:close()
    l:close()
  end)
end)

-- ------------------------------------------------------------------------

describe("unix datagram sockets", function()
  it("carry datagrams between two bound sockets with their paths",
    H.on_two(dgram, function(a, apath, b, bpath)
      assert.equal(apath, (a:getsockname()))
      assert.is_true(a:sendto("to b", bpath))
      local data, from = b:recvfrom()
      assert.equal("to b", data)
      assert.equal(apath, from)
      assert.is_true(b:sendto("to a", from))
      assert.same({ "to a", bpath }, { a:recvfrom() })
    end))

  it("keep datagram boundaries", H.on_two(dgram, function(a, apath, b, bpath)
    for i = 1, 10 do assert(a:sendto(string.rep("d", i), bpath)) end
    for i = 1, 10 do assert.equal(string.rep("d", i), (b:recvfrom())) end
  end))

  it("refuse a datagram longer than 64 KiB with EMSGSIZE, not a cut one",
    function()
      local a, apath = dgram()
      local b = dgram()
      for _, s in ipairs({ a, b }) do
        s:setsockopt("sndbuf", 1 << 20)
        s:setsockopt("rcvbuf", 1 << 20)
      end
      assert(b:sendto(string.rep("x", 100000), apath))
      assert(b:sendto("after", apath))
      H.assert_fail("EMSGSIZE", a:recvfrom())
      assert.equal("after", (a:recvfrom()))
      a:close()
      b:close()
    end)

  it("give \"\" as the sender of an unbound socket", function()
    local b, bpath = dgram()
    local u = assert(sr.socket("unix", "dgram"))
    assert.is_true(u:sendto("anonymous", bpath))
    local data, from = b:recvfrom()
    assert.equal("anonymous", data)
    assert.equal("", from)
    u:close()
    b:close()
  end)

  it("connect sets the peer for write, read and sendto",
    H.on_two(dgram, function(a, apath, b, bpath)
      assert.is_true(a:connect(bpath))
      assert.equal(bpath, (a:getpeername()))
      assert.equal(a, a:write("via ", "write"))
      assert.same({ "via write", apath }, { b:recvfrom() })
      assert.is_true(a:sendto("via sendto"))
      assert.equal("via sendto", (b:recvfrom()))
      b:sendto("reply", apath)
      assert.equal("reply", a:read())
    end))

  it("an unbound connected socket can write", function()
    local b, bpath = dgram()
    local u = assert(sr.socket("unix", "dgram"))
    assert.is_true(u:connect(bpath))
    u:write("notify")
    assert.same({ "notify", "" }, { b:recvfrom() })
    u:close()
    b:close()
  end)

  it("work in the abstract namespace", function()
    local aname, bname = abstract(), abstract()
    local a = dgram(aname)
    local b = dgram(bname)
    assert.equal(aname, (a:getsockname()))
    assert.is_true(a:sendto("abstract dgram", bname))
    assert.same({ "abstract dgram", aname }, { b:recvfrom() })
    a:close()
    b:close()
  end)

  it("recvfrom times out with ETIMEDOUT and still works after",
    H.on_two(dgram, function(a, apath, b, bpath)
      b:settimeout(0.05)
      H.assert_timeout(b:recvfrom())
      a:sendto("later", bpath)
      assert.equal("later", (b:recvfrom()))
    end))

  it("sendto returns nil, msg, ENOENT for a missing path", function()
    local a = dgram()
    H.assert_fail("ENOENT", a:sendto("lost", H.tmppath("missing")))
    a:close()
  end)

  it("connect returns nil, msg, ENOENT for a missing path", function()
    check_connect_missing("dgram")
  end)

  it("bind fails with EADDRINUSE on an existing path", function()
    check_bind_in_use("dgram")
  end)

  it("raise for a path that is too long", function()
    local a = dgram()
    local long = "/tmp/" .. string.rep("z", 150)
    H.raises(function() return a:sendto("x", long) end,
      "bad argument #2 to 'sendto'", "too long")
    H.raises(function() return a:bind(long) end,
      "bad argument #1 to 'bind'", "too long")
    a:close()
  end)

  it("answer EBADF on a closed socket", function()
    local a = dgram()
    a:close()
    H.assert_closed(a:sendto("x", "/tmp/x"))
    H.assert_closed(a:recvfrom())
    H.assert_closed(a:read())
  end)

  it("work inside a task", H.on_two(dgram, function(a, apath, b, bpath)
    H.in_task(function()
      local echo_task = sr.spawn(function()
        local data, from = b:recvfrom()
        b:sendto(data:reverse(), from)
      end)
      a:sendto("olleh", bpath)
      assert.same({ "hello", bpath }, { a:recvfrom() })
      echo_task:join(5)
    end)
  end))
end)
