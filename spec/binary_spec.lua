-- The sockrun binary: arguments as lua5.4 sets them, -e/-l/-/-v/-h, exit
-- status, process lifetime (servers, sr.stop), task errors, running from
-- any directory without LUA_PATH, and no death by SIGPIPE.
local H = require "helper"

-- The binary by absolute path, so tests can run it from another directory.
local SOCKRUN = H.sockrun
if SOCKRUN:sub(1, 1) ~= "/" then
  SOCKRUN = (os.getenv("PWD") or ".") .. "/" .. SOCKRUN
end

-- Files made by a test, removed after it.
local files = {}
local function tmpfile(content, suffix)
  local base = os.tmpname() -- creates the file: remove it too
  files[#files + 1] = base
  local path = base .. (suffix or "")
  local f = assert(io.open(path, "w"))
  f:write(content or "")
  f:close()
  files[#files + 1] = path
  return path
end

after_each(function()
  for _, p in ipairs(files) do os.remove(p) end
  files = {}
end)

-- Run the binary with a shell-quoted argument string; returns stdout,
-- stderr, exit status (128+N when killed by signal N; 124 on timeout).
-- opts: stdin (text), cwd, env (a prefix such as "env -u LUA_PATH"),
-- timeout (seconds, default 10).
local function run(args, opts)
  opts = opts or {}
  local errpath = tmpfile()
  local inpath = tmpfile(opts.stdin or "")
  local cmd = string.format("%s timeout %s %s %s <%s 2>%s", opts.env or "",
    tostring(opts.timeout or 10), H.q(SOCKRUN), args or "", H.q(inpath),
    H.q(errpath))
  if opts.cwd then cmd = "cd " .. H.q(opts.cwd) .. " && " .. cmd end
  local out, code = H.sh(cmd)
  local f = assert(io.open(errpath))
  local err = f:read("a")
  f:close()
  return out, err, code
end

-- Write src to a script file and run it with the given argument string.
local function run_src(src, args, opts)
  local path = tmpfile(src, ".lua")
  local out, err, code = run(H.q(path) .. " " .. (args or ""), opts)
  return out, err, code, path
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
    local path = tmpfile(src, ".lua")
    local out, err, code = run(H.q(path) .. " a b")
    assert.equal(0, code, err)
    assert.matches("arg0\t" .. path .. "\n", out, 1, true)
    assert.matches("arg1\ta\n", out, 1, true)
    assert.matches("arg2\tb\n", out, 1, true)
    assert.matches("n\t2\n", out, 1, true)
    assert.matches("argm1\t" .. SOCKRUN .. "\n", out, 1, true)
  end)

  it("passes the arguments to the script as ...", function()
    local out, err, code = run_src(src, "a 'b c' ''")
    assert.equal(0, code, err)
    assert.matches("dots\t3\ta\tb c\t\n", out, 1, true)
  end)

  it("puts options before the script at negative indices", function()
    local path = tmpfile([[
      print(arg[-3], arg[-2], arg[-1], arg[0], arg[1], #arg)
    ]], ".lua")
    local out, err, code = run("-e 'x = 1' " .. H.q(path) .. " p")
    assert.equal(0, code, err)
    assert.equal(table.concat({ SOCKRUN, "-e", "x = 1", path, "p", "1" }, "\t") .. "\n", out)
  end)

  it("gives an empty arg list when there are no arguments", function()
    local out, err, code = run_src(src)
    assert.equal(0, code, err)
    assert.matches("n\t0\n", out, 1, true)
    assert.matches("dots\t0\n", out, 1, true)
  end)

  it("stops handling options after --", function()
    local path = tmpfile("print(arg[0] ~= nil, ...)", ".lua")
    local out, err, code = run("-- " .. H.q(path) .. " -v")
    assert.equal(0, code, err)
    assert.equal("true\t-v\n", out)
  end)

  it("fails with status 1 when the script does not exist", function()
    local out, err, code = run("/nonexistent/sockrun-spec-script.lua")
    assert.equal(1, code)
    assert.equal("", out)
    assert.matches("nonexistent", err, 1, true)
  end)
end)

describe("sockrun -e", function()
  it("runs the code", function()
    local out, err, code = run("-e 'print(6 * 7)'")
    assert.equal(0, code, err)
    assert.equal("42\n", out)
  end)

  it("runs several chunks in order, before the script", function()
    local path = tmpfile("print('script', x)", ".lua")
    local out, err, code = run("-e 'x = 1' -e 'x = x + 1; print(\"e\", x)' " .. H.q(path))
    assert.equal(0, code, err)
    assert.equal("e\t2\nscript\t2\n", out)
  end)

  it("runs the code as a task that may block", function()
    local out, err, code = run([[-e 'local sr = require "sockrun"; print(sr.current() ~= nil); sr.sleep(0.01); print("slept")']])
    assert.equal(0, code, err)
    assert.equal("true\nslept\n", out)
  end)

  it("exits 1 with the message when the code raises", function()
    local out, err, code = run("-e 'error(\"from -e\")'")
    assert.equal(1, code)
    assert.matches("from -e", err, 1, true)
  end)

  it("exits 1 on a syntax error in the code", function()
    local _, err, code = run("-e 'x = = 1'")
    assert.equal(1, code)
    assert.matches("command line", err, 1, true)
  end)

  it("prints usage and fails when the code is missing", function()
    local _, err, code = run("-e")
    assert.is_true(code ~= 0)
    assert.matches("usage", err, 1, true)
  end)
end)

describe("sockrun -l", function()
  it("requires a module into a global of its name", function()
    local dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir " .. H.q(dir)))
    local modpath = dir .. "/sockrun_spec_mod.lua"
    local f = assert(io.open(modpath, "w"))
    f:write("return { value = 'from the module' }\n")
    f:close()
    files[#files + 1] = modpath
    files[#files + 1] = dir -- removed after the file (os.remove on an empty dir)
    local out, err, code = run("-l sockrun_spec_mod -e 'print(sockrun_spec_mod.value)'",
      { env = "LUA_PATH=" .. H.q(dir .. "/?.lua;;") })
    assert.equal(0, code, err)
    assert.equal("from the module\n", out)
  end)

  it("loads the built-in sockrun module", function()
    local out, err, code = run("-l sockrun -e 'print(type(sockrun.spawn), type(sockrun.listen))'")
    assert.equal(0, code, err)
    assert.equal("function\tfunction\n", out)
  end)

  it("accepts g=mod to choose the global name", function()
    local out, err, code = run("-l S=sockrun -e 'print(type(S.sleep))'")
    assert.equal(0, code, err)
    assert.equal("function\n", out)
  end)

  it("exits 1 when the module cannot be found", function()
    local _, err, code = run("-l sockrun_spec_no_such_module -e 'print(1)'")
    assert.equal(1, code)
    assert.matches("sockrun_spec_no_such_module", err, 1, true)
  end)
end)

describe("sockrun -", function()
  it("runs standard input", function()
    local out, err, code = run("-", { stdin = 'print("from stdin")\n' })
    assert.equal(0, code, err)
    assert.equal("from stdin\n", out)
  end)

  it("passes the arguments after - to the chunk, as lua5.4 does", function()
    local out, err, code = run("- a b", {
      stdin = 'print(arg[0], arg[1], arg[2], #arg, select("#", ...), ...)\n',
    })
    assert.equal(0, code, err)
    assert.equal("-\ta\tb\t2\t2\ta\tb\n", out)
  end)

  it("exits 1 when standard input raises", function()
    local _, err, code = run("-", { stdin = 'error("stdin boom")\n' })
    assert.equal(1, code)
    assert.matches("stdin boom", err, 1, true)
  end)
end)

describe("sockrun -v", function()
  it("prints a version naming sockrun and exits 0", function()
    local out, err, code = run("-v")
    assert.equal(0, code)
    assert.matches("sockrun", out .. err, 1, true)
    assert.matches("%d+%.%d+", out .. err)
  end)
end)

describe("sockrun -h", function()
  it("prints the usage", function()
    local out, err, code = run("-h")
    assert.equal(0, code)
    local text = out .. err
    assert.matches("usage", text, 1, true)
    assert.matches("-e", text, 1, true)
    assert.matches("-l", text, 1, true)
  end)
end)

describe("an unknown option", function()
  it("prints the usage and exits non-zero", function()
    local out, err, code = run("-Z")
    assert.is_true(code ~= 0 and code < 128)
    assert.matches("usage", out .. err, 1, true)
  end)
end)

describe("the exit status", function()
  it("is 0 when the script ends normally", function()
    local out, err, code = run_src('print("done")')
    assert.equal(0, code, err)
    assert.equal("done\n", out)
    assert.equal("", err)
  end)

  it("is 1 when the main chunk raises, with message and traceback on stderr", function()
    local out, err, code = run_src('print("before")\nerror("main chunk failed")')
    assert.equal(1, code)
    assert.equal("before\n", out)
    assert.matches("main chunk failed", err, 1, true)
    assert.matches("stack traceback", err, 1, true)
  end)

  it("is 1 for a syntax error, with the message on stderr", function()
    local out, err, code, path = run_src("local = 1")
    assert.equal(1, code)
    assert.equal("", out)
    assert.matches(path .. ":1:", err, 1, true)
    assert.matches("expected near", err, 1, true)
  end)

  it("is 1 when the main chunk raises after blocking", function()
    local _, err, code = run_src([[
      local sr = require "sockrun"
      sr.sleep(0.01)
      error("failed after a sleep")
    ]])
    assert.equal(1, code)
    assert.matches("failed after a sleep", err, 1, true)
  end)

  it("is what os.exit says", function()
    local _, _, code = run_src("os.exit(3)")
    assert.equal(3, code)
  end)

  it("is 0 when another task fails, whose error goes to stderr", function()
    local out, err, code = run_src([[
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
    local _, err, code = run_src([[
      local sr = require "sockrun"
      sr.spawn(function() sr.sleep(0.02); print("side done") end)
      error("main fails")
    ]])
    assert.equal(1, code)
    assert.matches("main fails", err, 1, true)
  end)
end)

describe("the main chunk", function()
  it("runs as a task", function()
    local out, err, code = run_src([[
      local sr = require "sockrun"
      print(sr.current() ~= nil, sr.current():status())
    ]])
    assert.equal(0, code, err)
    assert.equal("true\trunning\n", out)
  end)

  it("may block, straight-line", function()
    local out, err, code = run_src([[
      local sr = require "sockrun"
      sr.sleep(0.01)
      print("slept")
    ]])
    assert.equal(0, code, err)
    assert.equal("slept\n", out)
  end)
end)

describe("the process", function()
  it("keeps running while a server listens, and exits 0 once it is closed", function()
    local out, err, code = run_src([[
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
    ]])
    assert.equal(0, code, err)
    assert.equal("echo: hello\n", out)
  end)

  it("outlives the main chunk while a task still serves", function()
    local out, err, code = run_src([[
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
    ]])
    assert.equal(0, code, err)
    assert.equal("main chunk ends\nhi there\n", out)
  end)

  it("does not exit on its own while a server listens", function()
    local out, _, code = run_src([[
      local sr = require "sockrun"
      assert(sr.listen("127.0.0.1", 0, function() end))
      print("listening")
      io.stdout:flush()
    ]], nil, { timeout = 1 })
    assert.equal(124, code) -- killed by timeout(1): it was still running
    assert.equal("listening\n", out)
  end)

  it("exits 0 on sr.stop() even while a server listens", function()
    local out, err, code = run_src([[
      local sr = require "sockrun"
      assert(sr.listen("127.0.0.1", 0, function() end))
      sr.spawn(function()
        sr.sleep(0.05)
        print("stopping")
        sr.stop()
      end)
    ]])
    assert.equal(0, code, err)
    assert.equal("stopping\n", out)
  end)

  it("exits 0 on sr.stop() called from the main chunk", function()
    local out, err, code = run_src([[
      local sr = require "sockrun"
      assert(sr.listen("127.0.0.1", 0, function() end))
      sr.stop()
      print("stopped")
    ]])
    assert.equal(0, code, err)
    assert.equal("stopped\n", out)
  end)

  it("runs from another directory without LUA_PATH, the Lua side built in", function()
    local dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir " .. H.q(dir)))
    local f = assert(io.open(dir .. "/script.lua", "w"))
    f:write([[
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
    ]])
    f:close()
    files[#files + 1] = dir .. "/script.lua"
    files[#files + 1] = dir
    local out, err, code = run("script.lua", {
      cwd = dir,
      env = "env -u LUA_PATH -u LUA_CPATH -u LUA_PATH_5_4 -u LUA_CPATH_5_4",
    })
    assert.equal(0, code, err)
    assert.equal("true\nBUILT IN\n", out)
  end)

  it("does not die of SIGPIPE when writing to a peer that went away", function()
    local out, err, code = run_src([[
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
