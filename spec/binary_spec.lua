-- The sockrun binary: arguments as lua5.4 sets them, -e/-l/-/-v/-h, exit
-- status, process lifetime (servers, sr.stop), task errors, running from
-- any directory without LUA_PATH, and no death by SIGPIPE.
local H = require "helper"

after_each(H.run_deferred)

-- A script file with `src`, removed after the test.
local function script(src) return H.tmpfile(src, ".lua") end

-- A fresh directory holding the files {name = content}; removed with them
-- after the test. Returns its path.
local function tmpdir(files)
  local dir = os.tmpname()
  os.remove(dir)
  assert(os.execute("mkdir " .. H.q(dir)))
  H.defer(function() os.remove(dir) end) -- runs last: the directory is empty
  for name, content in pairs(files) do
    local path = dir .. "/" .. name
    local f = assert(io.open(path, "w"))
    f:write(content)
    f:close()
    H.defer(function() os.remove(path) end)
  end
  return dir
end

-- Assert that a run (stdout, stderr, status) exited with status 0 having
-- printed `want` on stdout.
local function assert_prints(want, out, err, code)
  assert.equal(0, code, err)
  assert.equal(want, out)
end

-- Assert that a run exited with status 1 and that its stderr contains
-- `text`.
local function assert_fails(text, _, err, code)
  assert.equal(1, code)
  assert.matches(text, err, 1, true)
end

describe("sockrun script.lua a b", function()
  local src = [[
    print("arg0", arg[0])
    print("arg1", arg[1])
    print("arg2", arg[2])
    print("n", #arg)
    print("argm1", arg[-1])
    print("dots", select("#", ...), ...)
  ]]

  it("sets arg as lua5.4 does", function()
    local out, err, code, path = H.run_script(src, "a b")
    assert.equal(0, code, err)
    assert.matches("arg0\t" .. path .. "\n", out, 1, true)
    assert.matches("arg1\ta\n", out, 1, true)
    assert.matches("arg2\tb\n", out, 1, true)
    assert.matches("n\t2\n", out, 1, true)
    assert.matches("argm1\t" .. H.sockrun .. "\n", out, 1, true)
  end)

  it("passes the arguments to the script as ...", function()
    local out, err, code = H.run_script(src, "a 'b c' ''")
    assert.equal(0, code, err)
    assert.matches("dots\t3\ta\tb c\t\n", out, 1, true)
  end)

  it("puts options before the script at negative indices", function()
    local path = script([[
      print(arg[-3], arg[-2], arg[-1], arg[0], arg[1], #arg)
    ]])
    assert_prints(table.concat({ H.sockrun, "-e", "x = 1", path, "p", "1" }, "\t") .. "\n",
      H.run("-e 'x = 1' " .. H.q(path) .. " p"))
  end)

  it("gives an empty arg list when there are no arguments", function()
    local out, err, code = H.run_script(src)
    assert.equal(0, code, err)
    assert.matches("n\t0\n", out, 1, true)
    assert.matches("dots\t0\n", out, 1, true)
  end)

  it("stops handling options after --", function()
    local path = script("print(arg[0] ~= nil, ...)")
    assert_prints("true\t-v\n", H.run("-- " .. H.q(path) .. " -v"))
  end)

  it("takes what follows -- as the script, even when it looks like an option",
    function()
      local err = H.assert_exit(1, H.run("-- -e 'print(1)'"))
      assert.matches("-e", err, 1, true)
    end)

  it("fails with status 1 when the script does not exist", function()
    local err = H.assert_exit(1, H.run("/nonexistent/sockrun-spec-script.lua"))
    assert.matches("nonexistent", err, 1, true)
  end)
end)

describe("sockrun -e", function()
  it("runs the code", function()
    assert_prints("42\n", H.run("-e 'print(6 * 7)'"))
  end)

  it("runs several chunks in order, before the script", function()
    local path = script("print('script', x)")
    assert_prints("e\t2\nscript\t2\n",
      H.run("-e 'x = 1' -e 'x = x + 1; print(\"e\", x)' " .. H.q(path)))
  end)

  it("runs the code as a task that may block", function()
    assert_prints("true\nslept\n",
      H.run([[-e 'local sr = require "sockrun"; print(sr.current() ~= nil); sr.sleep(0.01); print("slept")']]))
  end)

  it("exits 1 with the message when the code raises", function()
    assert_fails("from -e", H.run("-e 'error(\"from -e\")'"))
  end)

  it("exits 1 on a syntax error in the code", function()
    assert_fails("command line", H.run("-e 'x = = 1'"))
  end)

  it("prints usage and fails when the code is missing", function()
    local _, err, code = H.run("-e")
    assert.is_true(code ~= 0)
    assert.matches("usage", err, 1, true)
  end)
end)

describe("sockrun -l", function()
  it("requires a module into a global of its name", function()
    local dir = tmpdir({
      ["sockrun_spec_mod.lua"] = "return { value = 'from the module' }\n",
    })
    assert_prints("from the module\n",
      H.run("-l sockrun_spec_mod -e 'print(sockrun_spec_mod.value)'",
        { env = "LUA_PATH=" .. H.q(dir .. "/?.lua;;") }))
  end)

  it("loads the built-in sockrun module", function()
    assert_prints("function\tfunction\n",
      H.run("-l sockrun -e 'print(type(sockrun.spawn), type(sockrun.listen))'"))
  end)

  it("accepts g=mod to choose the global name", function()
    assert_prints("function\n", H.run("-l S=sockrun -e 'print(type(S.sleep))'"))
  end)

  it("exits 1 when the module cannot be found", function()
    assert_fails("sockrun_spec_no_such_module",
      H.run("-l sockrun_spec_no_such_module -e 'print(1)'"))
  end)
end)

describe("sockrun -", function()
  it("runs standard input", function()
    assert_prints("from stdin\n", H.run("-", { stdin = 'print("from stdin")\n' }))
  end)

  it("passes the arguments after - to the chunk, as lua5.4 does", function()
    assert_prints("-\ta\tb\t2\t2\ta\tb\n", H.run("- a b", {
      stdin = 'print(arg[0], arg[1], arg[2], #arg, select("#", ...), ...)\n',
    }))
  end)

  it("exits 1 when standard input raises", function()
    assert_fails("stdin boom", H.run("-", { stdin = 'error("stdin boom")\n' }))
  end)
end)

describe("sockrun -v", function()
  it("prints a version naming sockrun and exits 0", function()
    local out, err, code = H.run("-v")
    assert.equal(0, code)
    assert.matches("sockrun", out .. err, 1, true)
    assert.matches("%d+%.%d+", out .. err)
  end)

  it("prints the version the module reports as sr.version", function()
    local out = H.run("-v")
    local version = H.sr.version
    assert.is_string(version)
    assert.matches("^sockrun " .. version:gsub("%p", "%%%0") .. " ", out)
  end)
end)

describe("sockrun -h", function()
  it("prints the usage on stdout and exits 0", function()
    local out, err, code = H.run("-h")
    assert.equal(0, code)
    assert.equal("", err)
    assert.matches("usage", out, 1, true)
    assert.matches("-e", out, 1, true)
    assert.matches("-l", out, 1, true)
  end)
end)

describe("an unknown option", function()
  it("is named, the usage follows on stderr, and the status is 1", function()
    local out, err, code = H.run("-Z")
    assert.equal(1, code)
    assert.equal("", out)
    assert.matches("unrecognized option '-Z'\nusage", err, 1, true)
  end)

  it("or a missing or bad argument is said so", function()
    assert.matches("'-e' needs argument", select(2, H.run("-e")), 1, true)
    assert.matches("-w takes a number of workers, 1 to 1024, not 'x'",
      select(2, H.run("-w x")), 1, true)
  end)
end)

describe("the exit status", function()
  it("is 0 when the script ends normally", function()
    local out, err, code = H.run_script('print("done")')
    assert.equal(0, code, err)
    assert.equal("done\n", out)
    assert.equal("", err)
  end)

  it("is 1 when the main chunk raises, with message and traceback on stderr", function()
    local out, err, code = H.run_script('print("before")\nerror("main chunk failed")')
    assert.equal(1, code)
    assert.equal("before\n", out)
    assert.matches("main chunk failed", err, 1, true)
    assert.matches("stack traceback", err, 1, true)
  end)

  it("is 1 for a syntax error, with the message on stderr", function()
    local out, err, code, path = H.run_script("local = 1")
    H.assert_exit(1, out, err, code)
    assert.matches(path .. ":1:", err, 1, true)
    assert.matches("expected near", err, 1, true)
  end)

  it("is 1 when the main chunk raises after blocking", function()
    assert_fails("failed after a sleep", H.run_script([[
      local sr = require "sockrun"
      sr.sleep(0.01)
      error("failed after a sleep")
    ]]))
  end)

  it("is what os.exit says", function()
    local _, _, code = H.run_script("os.exit(3)")
    assert.equal(3, code)
  end)

  it("is 0 when another task fails, whose error goes to stderr", function()
    local out, err, code = H.run_script([[
      local sr = require "sockrun"
      sr.spawn(function() sr.sleep(0.01); error("side task failed") end)
      sr.spawn(function() error("failed at once") end)
      print("main done")
    ]])
    assert.equal(0, code)
    assert.equal("main done\n", out)
    assert.matches("side task failed", err, 1, true)
    assert.matches("failed at once", err, 1, true)
    assert.matches("stack traceback", err, 1, true)
  end)

  it("is 1 when the main chunk raises even though other tasks succeed", function()
    assert_fails("main fails", H.run_script([[
      local sr = require "sockrun"
      sr.spawn(function() sr.sleep(0.02); print("side done") end)
      error("main fails")
    ]]))
  end)
end)

describe("the main chunk", function()
  it("runs as a task", function()
    assert_prints("true\trunning\n", H.run_script([[
      local sr = require "sockrun"
      print(sr.current() ~= nil, sr.current():status())
    ]]))
  end)

  it("may block, straight-line", function()
    assert_prints("slept\n", H.run_script([[
      local sr = require "sockrun"
      sr.sleep(0.01)
      print("slept")
    ]]))
  end)

  -- A script written for lua5.4 ends with sr.run(): the same file must
  -- serve under the binary, and what follows sr.run() run after it.
  it("may call sr.run(), which returns once no work is left", function()
    assert_prints("hi\nrun:\ttrue\nafter\n", H.run_script([[
      local sr = require "sockrun"
      local srv = assert(sr.listen("127.0.0.1", 0, function(c) c:write("hi\n") end))
      sr.spawn(function()
        local c = assert(sr.connect("127.0.0.1", select(2, srv:getsockname())))
        print(c:read("l"))
        c:close()
        srv:close()
      end)
      print("run:", sr.run())
      print("after")
    ]]))
  end)

  it("may call sr.run(fn, ...), which returns after sr.stop() drained the handlers",
    function()
      assert_prints("fn\t42\nreply\tlate\nrun:\ttrue\nafter\n", H.run_script([[
        local sr = require "sockrun"
        local srv = assert(sr.listen("127.0.0.1", 0, function(c)
          sr.sleep(0.1)
          c:write("late\n")
        end))
        local port = select(2, srv:getsockname())
        print("run:", sr.run(function(x)
          print("fn", x)
          local c = assert(sr.connect("127.0.0.1", port))
          sr.spawn(function() sr.sleep(0.02); sr.stop() end)
          print("reply", c:read("l"))
          c:close()
        end, 42))
        print("after")
      ]]))
    end)

  it("exits once the code after its sr.run() ran, after SIGINT, other tasks or not",
    function()
      local proc = H.spawn_script([[
        local sr = require "sockrun"
        io.stdout:setvbuf("line")
        sr.spawn(function() while true do sr.sleep(0.05) end end) -- a ticker
        assert(sr.listen("127.0.0.1", 0, function() end))
        print("ready")
        sr.run()
        sr.sleep(0.02) -- the rest of the chunk may still block
        print("after run")
      ]])
      assert(H.wait_for(function() return H.slurp(proc.out) == "ready\n" end))
      H.kill(proc, "INT")
      assert.equal(0, H.wait_exit(proc, 10), H.slurp(proc.err))
      assert.equal("ready\nafter run\n", H.slurp(proc.out))
    end)

  it("still may not call sr.run() from another task", function()
    assert_fails("inside a task", H.run_script([[
      local sr = require "sockrun"
      assert(sr.spawn(function() sr.run() end):join())
    ]]))
  end)

  it("exits 1 with a deadlock message when it waits on what nothing can end",
    function()
      for _, wait in ipairs({ "sr.sleep(math.huge)",
                              "sr.spawn(function() sr.sleep(math.huge) end):join()" }) do
        local out, err, code = H.run_script(
          "local sr = require 'sockrun'\n" .. wait .. "\nprint('never')\n")
        assert.equal(1, code, err)
        assert.equal("", out)
        assert.matches("deadlock: the main chunk waits", err)
      end
    end)
end)

describe("the process", function()
  it("keeps running while a server listens, and exits 0 once it is closed", function()
    assert_prints("echo: hello\n", H.run_script([[
      local sr = require "sockrun"
      local srv = assert(sr.listen("127.0.0.1", 0, function(c)
        local line = c:read("l")
        c:write("echo: " .. line .. "\n")
      end))
      local _, port = srv:getsockname()
      local c = assert(sr.connect("127.0.0.1", port))
      c:write("hello\n")
      print(c:read("l"))
      c:close()
      srv:close()
    ]]))
  end)

  it("serves and exits 0 when started with stdin, stdout and stderr closed", function()
    -- libuv aborts closing a descriptor below 3: none may land there.
    local result = H.tmppath("closed-stdio")
    local path = script([[
      local sr = require "sockrun"
      local srv = assert(sr.listen("127.0.0.1", 0, function(c)
        c:write(c:read("l"), "\n")
      end))
      local c = assert(sr.connect("127.0.0.1", select(2, srv:getsockname())))
      local got = c:write("hello\n"):read("l")
      c:close()
      srv:close()
      local f = assert(io.open(arg[1], "w"))
      f:write(got)
      f:close()
    ]])
    local _, code = H.sh(string.format("timeout 10 %s %s %s <&- >&- 2>&-",
      H.q(H.sockrun), H.q(path), H.q(result)))
    assert.equal(0, code)
    assert.equal("hello", H.slurp(result))
  end)

  it("outlives the main chunk while a task still serves", function()
    assert_prints("main chunk ends\nhi there\n", H.run_script([[
      local sr = require "sockrun"
      local srv = assert(sr.listen("127.0.0.1", 0, function(c)
        c:write("hi " .. c:read("l") .. "\n")
      end))
      local _, port = srv:getsockname()
      sr.spawn(function()
        sr.sleep(0.05) -- the main chunk has ended by now
        local c = assert(sr.connect("127.0.0.1", port))
        c:write("there\n")
        print(c:read("l"))
        c:close()
        srv:close()
      end)
      print("main chunk ends")
    ]]))
  end)

  it("does not exit on its own while a server listens", function()
    local out, _, code = H.run_script([[
      local sr = require "sockrun"
      assert(sr.listen("127.0.0.1", 0, function() end))
      print("listening")
      io.stdout:flush()
    ]], nil, { timeout = 1 })
    assert.equal(124, code) -- killed by timeout(1): it was still running
    assert.equal("listening\n", out)
  end)

  it("exits 0 on sr.stop() even while a server listens", function()
    assert_prints("stopping\n", H.run_script([[
      local sr = require "sockrun"
      assert(sr.listen("127.0.0.1", 0, function() end))
      sr.spawn(function()
        sr.sleep(0.05)
        print("stopping")
        sr.stop()
      end)
    ]]))
  end)

  it("exits 0 on sr.stop() called from the main chunk", function()
    assert_prints("stopped\n", H.run_script([[
      local sr = require "sockrun"
      assert(sr.listen("127.0.0.1", 0, function() end))
      sr.stop()
      print("stopped")
    ]]))
  end)

  it("runs from another directory without LUA_PATH, the Lua side built in", function()
    local dir = tmpdir({ ["script.lua"] = [[
      local sr = require "sockrun"
      print(package.path:find("/work/main", 1, true) == nil)
      local srv = assert(sr.listen("127.0.0.1", 0, function(c)
        c:write(c:read("l"):upper() .. "\n")
      end))
      local _, port = srv:getsockname()
      sr.spawn(function()
        local c = assert(sr.connect("127.0.0.1", port))
        c:write("built in\n")
        print(c:read("l"))
        c:close()
        srv:close()
      end)
    ]] })
    assert_prints("true\nBUILT IN\n", H.run("script.lua", {
      cwd = dir,
      env = "env -u LUA_PATH -u LUA_CPATH -u LUA_PATH_5_4 -u LUA_CPATH_5_4",
    }))
  end)

  it("does not die of SIGPIPE when writing to a peer that went away", function()
    local out, err, code = H.run_script([[
      local sr = require "sockrun"
      local srv = assert(sr.listen("127.0.0.1", 0, function(c)
        c:read("l") -- then the handler returns: the connection closes
      end))
      local _, port = srv:getsockname()
      sr.spawn(function()
        local c = assert(sr.connect("127.0.0.1", port))
        c:write("bye\n")
        c:settimeout(2)
        c:read() -- EOF: the peer went away
        local chunk = string.rep("z", 65536)
        local ok, msg, ecode
        for _ = 1, 200 do
          ok, msg, ecode = c:write(chunk)
          if not ok then break end
          sr.sleep(0)
        end
        print("write", ok, ecode)
        c:close()
        srv:close()
      end)
    ]])
    assert.is_true(code == 0 or code == 1, "exit status " .. code .. ": " .. err)
    assert.not_equal(141, code)
    assert.equal(0, code, err)
    assert.matches("write\tnil\t", out, 1, true)
  end)
end)

local sr = H.sr

describe("sockrun -w N", function()
  after_each(H.assert_clean)

  it("serves one port from N worker processes and drains them all on SIGTERM",
    function()
      local port = H.free_port("tcp")
      local path = H.tmpfile([[
        local sr = require "sockrun"
        io.stdout:setvbuf("line")
        assert(sr.listen("127.0.0.1", tonumber(arg[1]), function(c)
          c:write("worker ", sr.worker, " of ", sr.workers, "\n")
        end))
        print("listening", sr.worker)
      ]], ".lua")
      local p = io.popen(string.format(
        "exec sh -c 'echo $$; exec %s -w 2 %s %d'", H.sockrun,
        path, port))
      local pid = assert(tonumber(p:read("l")))
      H.defer(function() os.execute("kill " .. pid .. " 2>/dev/null") end)
      assert.matches("^listening\t[12]$", p:read("l"))
      assert.matches("^listening\t[12]$", p:read("l"))
      local seen, n = {}, 0
      for _ = 1, 400 do -- the kernel spreads connections over both
        local c = assert(sr.connect("127.0.0.1", port))
        local line = assert(c:read("l"))
        c:close()
        local w = line:match("^worker (%d) of 2$")
        assert(w, line)
        if not seen[w] then seen[w], n = true, n + 1 end
        if n == 2 then break end
      end
      assert.equal(2, n)
      local workers = {}
      for w in H.slurp(("/proc/%d/task/%d/children"):format(pid, pid))
          :gmatch("%d+") do
        workers[#workers + 1] = w
      end
      assert.equal(2, #workers)
      os.execute("kill -TERM " .. pid)
      for _ = 1, 200 do -- bounded: 10 s for the drain and the exit
        local f = io.open("/proc/" .. pid .. "/stat")
        local st = f and f:read("a"):match("^%d+ %b() (%a)")
        if f then f:close() end
        if not st or st == "Z" then break end
        os.execute("sleep 0.05")
      end
      os.execute("kill -KILL " .. pid .. " 2>/dev/null") -- if it hung: fail
      local ok, how, code = p:close()
      assert.is_true(ok, how .. " " .. tostring(code))
      assert.equal(0, code)
      for _, w in ipairs(workers) do -- gone, not left behind
        assert.is_nil(io.open("/proc/" .. w .. "/stat"))
      end
      os.remove(path)
    end)

  -- Start `sockrun -w 2 script port` in a process group of its own (so a
  -- test can signal the group as a terminal would); returns its pid and the
  -- popen handle, once both workers listen.
  local function start_workers(src, port)
    local path = H.tmpfile(src, ".lua")
    local p = io.popen(string.format(
      "exec setsid sh -c 'echo $$; exec %s -w 2 %s %d'", H.sockrun, path,
      port))
    local pid = assert(tonumber(p:read("l")))
    H.defer(function() os.execute("kill -KILL " .. pid .. " 2>/dev/null") end)
    assert.matches("^listening$", p:read("l"))
    assert.matches("^listening$", p:read("l"))
    return pid, p
  end

  local function workers_of(pid)
    local list = {}
    local kids = H.slurp(("/proc/%d/task/%d/children"):format(pid, pid)) or ""
    for w in kids:gmatch("%d+") do list[#list + 1] = tonumber(w) end
    return list
  end

  local function gone(pid)
    local f = io.open("/proc/" .. pid .. "/stat")
    local st = f and f:read("a"):match("^%d+ %b() (%a)")
    if f then f:close() end
    return not st or st == "Z"
  end

  local function wait_gone(pid)
    for _ = 1, 200 do -- bounded: 10 s
      if gone(pid) then return true end
      os.execute("sleep 0.05")
    end
    return gone(pid)
  end

  -- A handler still at work when the signal comes: drained, it answers.
  local SLOW = [[
    local sr = require "sockrun"
    io.stdout:setvbuf("line")
    assert(sr.listen("127.0.0.1", tonumber(arg[1]), function(c)
      c:read("l")
      sr.sleep(0.5)
      c:write("drained\n")
    end))
    print("listening")
  ]]

  for _, case in ipairs({
    -- each worker must get the signal once, from the parent: a second one
    -- means "exit at once"
    { "a SIGINT sent to its whole process group, as a terminal's Ctrl-C is",
      "kill -INT -%d" },
    { "a SIGHUP to the parent, passed on as SIGTERM", "kill -HUP %d" },
  }) do
    it("drains on " .. case[1], function()
      local port = H.free_port("tcp")
      local pid, p = start_workers(SLOW, port)
      local c = assert(sr.connect("127.0.0.1", port))
      c:settimeout(10)
      assert(c:write("go\n"))
      sr.sleep(0.1) -- the handler is in its sleep
      os.execute(case[2]:format(pid))
      assert.equal("drained", c:read("l"))
      c:close()
      assert.is_true(wait_gone(pid))
      local ok, _, code = p:close()
      assert.is_true(ok)
      assert.equal(0, code)
    end)
  end

  it("leaves no worker serving when the parent is killed", function()
    local port = H.free_port("tcp")
    local pid, p = start_workers(SLOW, port)
    local workers = workers_of(pid)
    assert.equal(2, #workers)
    os.execute("kill -KILL " .. pid)
    p:close()
    for _, w in ipairs(workers) do assert.is_true(wait_gone(w)) end
  end)

  it("exits 1 when a worker fails, and sets no sr.worker without -w", function()
    local out, err, code = H.run_script([[
      local sr = require "sockrun"
      print(sr.worker, sr.workers)
    ]])
    assert.equal(0, code, err)
    assert.equal("nil\tnil\n", out)
    local path = H.tmpfile([[
      local sr = require "sockrun"
      if sr.worker == 2 then error("worker 2 fails") end
    ]], ".lua")
    local _, err2, code2 = H.run("-w 2 " .. H.q(path))
    assert.equal(1, code2)
    assert.matches("worker 2 fails", err2, 1, true)
  end)

  it("refuses a worker count that is not a positive integer", function()
    for _, n in ipairs({ "0", "-1", "x", "1.5" }) do
      local out, err, code = H.run("-w " .. n .. " x.lua")
      assert.equal(1, code)
      assert.matches("usage", err)
      assert.equal("", out)
    end
  end)

  it("needs a script file", function()
    local _, err, code = H.run("-w 2 -e 'print(1)'")
    assert.equal(1, code)
    assert.matches("%-w needs a script file", err)
  end)
end)

describe("sr.shutdown in the binary", function()
  it("lets a closed connection send what it has queued before the process exits",
    function()
      -- The handler queues 4 MiB and returns (its write returns at the
      -- 1 MiB high-water mark), then the script shuts down: the last MiB
      -- still goes out, within the grace, before the exit.
      local p = H.spawn_script([[
        local sr = require "sockrun"
        io.stdout:setvbuf("line")
        local srv = assert(sr.listen("127.0.0.1", 0, function(c)
          assert(c:write(string.rep("x", 4 * 1024 * 1024)))
          sr.spawn(sr.shutdown, 5)
        end))
        print((select(2, srv:getsockname())))
      ]])
      local port = H.read_port(p)
      local c = assert(sr.connect("127.0.0.1", port))
      c:settimeout(10)
      local got = 0
      while got < 3 * 1024 * 1024 do
        got = got + #assert(c:read(64 * 1024))
      end
      sr.sleep(0.3) -- the handler has returned and the shutdown begun
      local rest = assert(c:read("a"))
      c:close()
      assert.equal(4 * 1024 * 1024, got + #rest)
      assert.equal(0, H.wait_exit(p, 10))
    end)
end)

describe("Lua warnings in the binary", function()
  it("prints them on stderr, pieces joined, a leading @ kept when the " ..
     "message has several pieces", function()
    local out, err, code = H.run_script([[
      warn("one ", "two")
      warn("@x", "y")
      warn("@off")
      warn("hidden")
    ]])
    assert.equal(0, code, err)
    assert.equal("", out)
    assert.equal("Lua warning: one two\nLua warning: @xy\n", err)
  end)
end)

describe("the binary's Lua allocator", function()
  it("keeps the contents of strings and tables of every size, as they " ..
     "grow, shrink and are collected", function()
    assert_prints("ok\n", H.run_script([[
      local keep = {}
      for round = 1, 3 do
        for n = 1, 3000, 7 do   -- across the pool's 1 KiB bound
          local s = string.rep(string.char(65 + n % 26), n)
          local t = {}
          for i = 1, n // 10 do t[i] = i * round end   -- grows by doubling
          keep[n] = { s = s, t = t }
        end
        collectgarbage()
        for n = 1, 3000, 7 do
          local k = keep[n]
          assert(#k.s == n and k.s == string.rep(string.char(65 + n % 26), n))
          for i = 1, n // 10 do assert(k.t[i] == i * round) end
          for i = #k.t, 2, -1 do k.t[i] = nil end      -- shrinks on rehash
          k.t.x = round
        end
        if round < 3 then keep = {} end
        collectgarbage()
      end
      print("ok")
    ]]))
  end)
end)

describe("the binary's garbage collector", function()
  it("runs in incremental mode (lua5.4's runs generational), and can " ..
     "switch", function()
    assert_prints("incremental\tgenerational\n", H.run_script([[
      print(collectgarbage("generational"), collectgarbage("incremental"))
    ]]))
  end)

  -- (the binary raises the soft limit to the hard one: set both)
  local limited = { env = "ulimit -n 256;" }

  it("takes back the descriptors of sockets dropped unclosed when it " ..
     "runs out of them, for new sockets and accepts", function()
    assert_prints("hi\n", H.run_script([[
      local sr = require "sockrun"
      for _ = 1, 3000 do assert(sr.socket("inet", "stream")) end
      local server = assert(sr.listen("127.0.0.1", 0, function(c)
        c:write("hi")
      end))
      for _ = 1, 3000 do sr.socket("inet", "stream") end -- up to the limit
      local c = assert(sr.connect("127.0.0.1",
                                  select(2, server:getsockname())))
      print(c:read(2))
      server:close()
    ]], nil, limited))
  end)

  it("answers EMFILE when the sockets are kept", function()
    assert_prints("EMFILE\ttrue\ttrue\n", H.run_script([[
      local sr = require "sockrun"
      local kept, s, err, code = {}
      repeat
        s, err, code = sr.socket("inet", "stream")
        kept[#kept + 1] = s
      until not s
      print(code, #kept > 200, err ~= nil)
    ]], nil, limited))
  end)
end)
