-- Tasks and the loop: sr.spawn, task:join/cancel/status, sr.current,
-- sr.sleep, sr.run/stop/step, the host-loop hooks, sr.now, sr.onerror,
-- sr.signal, and what a blocking call does outside a task.
local H = require "helper"
local sr = H.sr

after_each(H.run_deferred)
after_each(H.assert_clean)

-- Wait (driving the loop) until pred() holds; bounded in count and time.
local function wait_until(pred, limit)
  for _ = 1, (limit or 200) do
    if pred() then return true end
    sr.sleep(0.01)
  end
  return pred()
end

-- Assert that the echo server on `port` answers: `line` there and back.
local function assert_echoes(port, line)
  local c = H.connect(port)
  c:write(line .. "\n")
  assert.equal(line, c:read("l"))
  c:close()
end

-- Run the script `src` with the binary on a 1 MiB C stack: stdout, status.
local function run_on_small_stack(src)
  local path = H.tmpfile(src, ".lua")
  return H.sh(string.format("ulimit -s 1024 && timeout 60 %s %s 2>/dev/null",
    H.q(H.sockrun), H.q(path)))
end

-- Assert that ok, err (as pcall gives them) are a failure whose message
-- matches the Lua pattern `pattern`; returns the message.
local function assert_raised(pattern, ok, err)
  assert.is_false(ok)
  assert.matches(pattern, err)
  return err
end

-- A task that calls its own `method` must get an error matching `pattern`,
-- and end normally.
local function check_self_call(method, pattern)
  local t = sr.spawn(function()
    local me = sr.current()
    return pcall(me[method], me)
  end)
  assert_raised(pattern, t:join())
  assert.equal("done", t:status())
end

-- Whether this process catches signal `num` (SigCgt in /proc/self/status).
local function catches_signal(num)
  local f = assert(io.open("/proc/self/status"))
  local st = f:read("a")
  f:close()
  local hex = assert(st:match("SigCgt:%s*(%x+)"))
  local mask = tonumber(hex:sub(-8), 16) -- signals 1..32 are enough here
  return (mask >> (num - 1)) & 1 == 1
end


describe("sr.spawn", function()
  it("runs the function at once, until it first blocks", function()
    local steps = {}
    local t = sr.spawn(function()
      steps[#steps + 1] = "before"
      sr.sleep(0.01)
      steps[#steps + 1] = "after"
    end)
    assert.same({ "before" }, steps)
    t:join()
    assert.same({ "before", "after" }, steps)
  end)

  it("passes many arguments on (300), growing the task's stack", function()
    local args = {}
    for i = 1, 300 do args[i] = i end
    local t = sr.spawn(function(...) return select("#", ...), (select(300, ...)) end,
      table.unpack(args))
    assert.same({ 300, 300 }, { t:join() })
  end)

  it("passes its extra arguments to the function", function()
    local t = sr.spawn(function(a, b, c) return a + b, c end, 1, 2, "three")
    local sum, c = t:join()
    assert.equal(3, sum)
    assert.equal("three", c)
  end)

  it("passes nil arguments through", function()
    local t = sr.spawn(function(...) return select("#", ...), (select(2, ...)) end,
      nil, "x", nil)
    local n, second = t:join()
    assert.equal(3, n)
    assert.equal("x", second)
  end)

  it("returns a task object", function()
    local t = sr.spawn(function() end)
    assert.equal("userdata", type(t))
    assert.equal("sockrun.task", getmetatable(t).__name)
    assert.equal("function", type(t.join))
    assert.equal("function", type(t.cancel))
    assert.equal("function", type(t.status))
  end)

  it("raises when given something that is not a function", function()
    for _, v in ipairs({ 42, "print", {}, true }) do
      assert_raised("bad argument #1", pcall(sr.spawn, v))
    end
    assert.is_false(pcall(sr.spawn))
  end)

  it("accepts a callable table", function()
    local callable = setmetatable({}, { __call = function(_, x) return x * 2 end })
    assert.equal(10, sr.spawn(callable, 5):join())
  end)
end)

describe("task:join", function()
  it("returns every result of the task, nils included", function()
    local t = sr.spawn(function() return 1, nil, "three" end)
    local r = table.pack(t:join())
    assert.equal(3, r.n)
    assert.equal(1, r[1])
    assert.is_nil(r[2])
    assert.equal("three", r[3])
  end)

  it("returns nothing for a task that returned nothing", function()
    local t = sr.spawn(function() end)
    assert.equal(0, select("#", t:join()))
  end)

  it("waits for a sleeping task to finish", function()
    local t = sr.spawn(function() sr.sleep(0.03); return "woke" end)
    assert.equal("waiting", t:status())
    assert.equal("woke", t:join())
    assert.equal("done", t:status())
  end)

  it("fails with ECANCELED, not a crash, once a script closed the ended task's coroutine",
    function()
      -- Lua shows a coroutine that returned values as "suspended", so
      -- coroutine.close takes them off its stack.
      local co
      local t = sr.spawn(function()
        co = coroutine.running()
        return 1, 2, 3
      end)
      assert.equal("suspended", coroutine.status(co))
      assert.is_true(coroutine.close(co))
      H.assert_fail("ECANCELED", t:join())
    end)

  it("wakes a chain of 20000 tasks, each joined on the one before", function()
    -- Each task's end wakes the next one's join: not a C call inside a C
    -- call all the way down, which a 1 MiB stack would not hold.
    local out, code = run_on_small_stack([[
      local sr = require "sockrun"
      local last = sr.spawn(function() sr.sleep(0.01); return 0 end)
      for _ = 1, 20000 do
        local prev = last
        last = sr.spawn(function() return prev:join() + 1 end)
      end
      print(last:join())
    ]])
    assert.equal(0, code)
    assert.equal("20000\n", out)
  end)

  it("waits without a deadline for a timeout of math.huge", function()
    local t = sr.spawn(function() sr.sleep(0.03); return "late" end)
    assert.equal("late", t:join(math.huge))
  end)

  it("can be called again once the task has ended", function()
    local t = sr.spawn(function() sr.sleep(0.01); return "r" end)
    assert.equal("r", t:join())
    assert.equal("r", t:join())
  end)

  it("waits inside a task as well as at top level", function()
    local inner = sr.spawn(function() sr.sleep(0.02); return 7 end)
    local outer = sr.spawn(function() return inner:join() + 1 end)
    assert.equal(8, outer:join())
  end)

  it("wakes every task joined on the same task", function()
    local target = sr.spawn(function() sr.sleep(0.02); return "x" end)
    local a = sr.spawn(function() return target:join() end)
    local b = sr.spawn(function() return target:join() end)
    assert.equal("x", a:join())
    assert.equal("x", b:join())
  end)

  it("returns nil, message, \"ETASK\" for a task that failed", function()
    H.quiet_errors()
    local t = sr.spawn(function() sr.sleep(0.01); error("kaboom") end)
    local msg, obj = H.assert_task_failed(t:join())
    assert.matches("kaboom", msg)
    assert.equal(msg, obj) -- a string error is its own message
    assert.equal("failed", t:status())
  end)

  it("gives the error to a task that joins while the failure is handled", function()
    -- the failing handler's connection closes as it fails, which wakes
    -- its reader at once, before the failure is done
    H.quiet_errors()
    local got
    local srv = assert(sr.listen("127.0.0.1", 0, function(c)
      local handler = sr.current()
      sr.spawn(function()
        c:read()
        got = table.pack(handler:join())
      end)
      sr.sleep(0.01)
      error("handler fails")
    end))
    local c = H.connect(select(2, srv:getsockname()))
    assert.is_true(H.wait_for(function() return got ~= nil end))
    local msg = H.assert_task_failed(table.unpack(got, 1, got.n))
    assert.matches("handler fails", msg)
    c:close()
    srv:close()
  end)

  it("gives a coroutine raised as the error object, not waiting on it", function()
    H.quiet_errors()
    local co = coroutine.create(print)
    local t = sr.spawn(function() error(co) end)
    local _, obj = H.assert_task_failed(t:join(1))
    assert.equal(co, obj)
  end)

  it("returns ETASK for a task that failed before spawn returned", function()
    H.quiet_errors()
    local t = sr.spawn(function() error("at once") end)
    assert.equal("failed", t:status())
    local msg = H.assert_task_failed(t:join())
    assert.matches("at once", msg)
  end)

  it("describes a non-string error object in the message, and gives the object",
    function()
      H.quiet_errors()
      local e = { reason = "table error" }
      local t = sr.spawn(function() error(e) end)
      local msg, obj = H.assert_task_failed(t:join())
      assert.equal(tostring(e), msg)
      assert.equal(e, obj)
    end)

  it("fails with ETIMEDOUT when the task outlasts the timeout", function()
    local t = sr.spawn(function() sr.sleep(5) end)
    H.assert_timeout(t:join(0.02))
    assert.equal("waiting", t:status())
    assert.is_true(t:cancel())
  end)

  it("fails with ETIMEDOUT inside a task too, and the joiner goes on", function()
    local sleeper = sr.spawn(function() sr.sleep(5) end)
    local t = sr.spawn(function()
      local ok, msg, code = sleeper:join(0.02)
      return ok, msg, code, "went on"
    end)
    local ok, msg, code, after = t:join()
    assert.is_nil(ok)
    assert.equal("timeout", msg)
    assert.equal("ETIMEDOUT", code)
    assert.equal("went on", after)
    assert.is_true(sleeper:cancel())
  end)

  it("returns the results when the task ends within the timeout", function()
    local t = sr.spawn(function() sr.sleep(0.01); return "in time" end)
    assert.equal("in time", t:join(5))
  end)

  it("raises on a negative timeout", function()
    local t = sr.spawn(function() sr.sleep(0.01) end)
    assert_raised("bad argument", pcall(t.join, t, -1))
    t:join()
  end)

  it("raises when a task joins itself", function()
    check_self_call("join", "join itself")
  end)

  it("raises when given something that is not a task", function()
    local t = sr.spawn(function() end)
    assert_raised("bad argument #1", pcall(t.join, {}))
  end)
end)

describe("task:cancel", function()
  -- n tasks, each of whose <close> cancels the next: every cancel nests in C
  local CHAIN = [[
    local sr, n, tasks = require "sockrun", ..., {}
    for i = 1, n do
      tasks[i] = sr.spawn(function()
        local _ <close> = setmetatable({}, { __close = function()
          if tasks[i + 1] then tasks[i + 1]:cancel() end
        end })
        sr.sleep(60)
      end)
    end
    return tasks
  ]]

  it("stops a chain of cancels 200 deep with an error, not a C stack overflow",
    function()
      local _, err, code = H.run_script(string.format([[
        local tasks = assert(load(%q))(100000)
        for i = 1, #tasks do tasks[i]:cancel() end
      ]], CHAIN))
      assert.equal(0, code)
      assert.matches("nested too deeply", err)
      local n = 400
      local tasks = assert(load(CHAIN))(n)
      assert.is_true(tasks[1]:cancel())
      assert.equal("cancelled", tasks[200]:status())
      assert.equal("waiting", tasks[202]:status())
      for i = 1, n do tasks[i]:cancel() end
      assert.equal("cancelled", tasks[n]:status())
    end)

  it("raises for a task whose coroutine a script resumed and that runs now",
    function()
      local co, t
      t = sr.spawn(function()
        co = coroutine.running()
        sr.sleep(10)
        -- resumed by hand, out of sockrun's wait: cancelling itself
        return pcall(t.cancel, t)
      end)
      local ok, err = sr.spawn(function()
        return select(2, coroutine.resume(co))
      end):join()
      assert.is_false(ok)
      assert.matches("cannot cancel a running task", err)
      t:cancel()
    end)

  it("cancels a sleeping task, whose join gives ECANCELED", function()
    local reached = false
    local t = sr.spawn(function() sr.sleep(5); reached = true end)
    assert.is_true(t:cancel())
    assert.equal("cancelled", t:status())
    H.assert_fail_msg("cancelled", "ECANCELED", t:join())
    sr.sleep(0.01)
    assert.is_false(reached)
  end)

  it("runs the cancelled task's <close> variables", function()
    local closed = {}
    local function closer(name)
      return setmetatable({}, { __close = function() closed[#closed + 1] = name end })
    end
    local t = sr.spawn(function()
      local a <close> = closer("a")
      local b <close> = closer("b")
      sr.sleep(5)
    end)
    assert.same({}, closed)
    assert.is_true(t:cancel())
    assert.same({ "b", "a" }, closed)
  end)

  it("closes a <close> socket of a task cancelled while reading", function()
    local srv, port = H.echo_server()
    local conn
    local t = sr.spawn(function()
      local c <close> = assert(sr.connect("127.0.0.1", port))
      conn = c
      return c:read("l")
    end)
    assert.is_true(wait_until(function() return conn ~= nil end))
    assert.equal("waiting", t:status())
    assert.is_true(t:cancel())
    H.assert_closed(conn:read())
    srv:close()
  end)

  it("leaves no socket open when it cancels a task inside sr.connect", function()
    local srv, port = H.echo_server()
    local t = sr.spawn(function()
      local c <close> = assert(sr.connect("127.0.0.1", port))
      return c:read("l")
    end)
    assert.equal("waiting", t:status()) -- still connecting
    H.defer(function()
      srv:close()
      collectgarbage() -- so a leak fails this test only
      collectgarbage()
    end)
    assert.is_true(t:cancel())
    srv:close()
    local nsock = H.settle()
    assert.equal(0, nsock)
  end)

  it("wakes a task joined on the cancelled task with ECANCELED", function()
    local target = sr.spawn(function() sr.sleep(5) end)
    local joiner = sr.spawn(function() return target:join() end)
    assert.is_true(target:cancel())
    H.assert_fail_msg("cancelled", "ECANCELED", joiner:join())
  end)

  it("takes a cancelled joiner off the task it was joined on", function()
    local target = sr.spawn(function() sr.sleep(0.02); return "fine" end)
    local joiner = sr.spawn(function() return target:join() end)
    assert.is_true(joiner:cancel())
    assert.equal("fine", target:join())
    assert.equal("cancelled", joiner:status())
  end)

  it("returns false for a task that has already ended", function()
    local done = sr.spawn(function() end)
    assert.is_false(done:cancel())
    assert.equal("done", done:status())
    local cancelled = sr.spawn(function() sr.sleep(5) end)
    assert.is_true(cancelled:cancel())
    assert.is_false(cancelled:cancel())
  end)

  it("returns false for a task that failed", function()
    H.quiet_errors()
    local t = sr.spawn(function() error("x") end)
    assert.is_false(t:cancel())
    assert.equal("failed", t:status())
  end)

  it("raises when a task cancels itself", function()
    check_self_call("cancel", "running")
  end)

  it("raises when a task cancels the task that is running it", function()
    local parent
    parent = sr.spawn(function()
      local me = sr.current()
      local child = sr.spawn(function() return pcall(me.cancel, me) end)
      return child:join()
    end)
    assert_raised("running", parent:join())
  end)
end)

describe("task:status", function()
  it("raises when given something that is not a task", function()
    local t = sr.spawn(function() end)
    H.raises(function() return t.status(42) end, "bad argument #1 to 'status'")
  end)

  it("is \"running\" for the task asking", function()
    local t = sr.spawn(function() return sr.current():status() end)
    assert.equal("running", t:join())
  end)

  it("is \"waiting\" while blocked, then \"done\"", function()
    local t = sr.spawn(function() sr.sleep(0.01) end)
    assert.equal("waiting", t:status())
    t:join()
    assert.equal("done", t:status())
  end)

  it("is \"failed\" after an error and \"cancelled\" after cancel", function()
    H.quiet_errors()
    local f = sr.spawn(function() error("no") end)
    assert.equal("failed", f:status())
    local c = sr.spawn(function() sr.sleep(5) end)
    c:cancel()
    assert.equal("cancelled", c:status())
  end)
end)

describe("tostring(task)", function()
  it("names the type and the status", function()
    local t = sr.spawn(function() sr.sleep(0.01) end)
    local s = tostring(t)
    assert.matches("^sockrun%.task", s)
    assert.matches("waiting", s)
    t:join()
    assert.matches("done", tostring(t))
  end)
end)

describe("sr.current", function()
  it("is nil at top level", function()
    assert.is_nil(sr.current())
  end)

  it("is the task inside one, before and after blocking", function()
    local t = sr.spawn(function()
      local first = sr.current()
      sr.sleep(0.01)
      return first, sr.current()
    end)
    local first, second = t:join()
    assert.equal(t, first)
    assert.equal(t, second)
  end)

  it("is the inner task inside a task spawned by a task", function()
    local outer = sr.spawn(function()
      local inner = sr.spawn(function() return sr.current() end)
      return sr.current(), inner, inner:join()
    end)
    local cur, inner, inner_cur = outer:join()
    assert.equal(outer, cur)
    assert.equal(inner, inner_cur)
    assert.not_equal(outer, inner)
  end)

  it("is nil in a foreign coroutine", function()
    local co = coroutine.wrap(function() return sr.current() end)
    assert.is_nil(co())
  end)
end)

-- For waits in a task, where the loop has not polled since the task began:
-- the time a script spent computing must not shorten a wait it starts.
local function compute(seconds)
  local t0 = os.clock()
  while os.clock() - t0 < seconds do end
end

describe("sr.sleep", function()
  it("lets I/O in while tasks compute longer than they sleep, in turn", function()
    H.in_task(function()
      local srv, port = H.echo_server()
      local c = H.connect(port)
      local stop_at = sr.now() + 1
      local busy = {}
      for i = 1, 2 do
        busy[i] = sr.spawn(function()
          while sr.now() < stop_at do
            compute(0.003)
            sr.sleep(0.001)
          end
        end)
      end
      sr.sleep(0.01)
      assert.equal("ping", c:write("ping\n"):read("l"))
      assert.is_true(sr.now() < stop_at, "the reply waited for the busy tasks to stop")
      for i = 1, 2 do busy[i]:join() end
      c:close(); srv:close()
    end)
  end)

  it("lasts its time from the call, however long the task computed before", function()
    H.in_task(function()
      local other = sr.spawn(function() sr.sleep(0.2) end)
      compute(0.15)
      sr.sleep(0.1) -- ends 0.25 s after other began its 0.2 s
      assert.equal("done", other:status())
    end)
  end)

  it("returns true at top level and in a task", function()
    assert.is_true(sr.sleep(0.01))
    assert.is_true(sr.sleep(0))
    assert.is_true(sr.spawn(function() return sr.sleep(0.01) end):join())
  end)

  it("raises on a negative duration", function()
    assert_raised("bad argument #1", pcall(sr.sleep, -1))
  end)

  it("sleeps until cancelled for math.huge", function()
    local t = sr.spawn(function() return sr.sleep(math.huge) end)
    sr.sleep(0.03)
    assert.equal("waiting", t:status())
    assert.is_true(t:cancel())
  end)

  it("raises on something that is not a number", function()
    assert_raised("bad argument #1", pcall(sr.sleep, "soon"))
    assert.is_false(pcall(sr.sleep, 0 / 0))
  end)

  it("lets other tasks run meanwhile, waking them in order", function()
    local order = {}
    local slow = sr.spawn(function() sr.sleep(0.1); order[#order + 1] = "slow" end)
    local fast = sr.spawn(function() sr.sleep(0.05); order[#order + 1] = "fast" end)
    slow:join()
    fast:join()
    assert.same({ "fast", "slow" }, order)
  end)

  it("lets background tasks progress while top level sleeps", function()
    local ticks = 0
    local t = sr.spawn(function()
      for _ = 1, 3 do sr.sleep(0.005); ticks = ticks + 1 end
    end)
    assert.is_true(wait_until(function() return ticks == 3 end))
    t:join()
  end)
end)


describe("a socket timeout", function()
  it("bounds a read from the call, however long the task computed before", function()
    H.in_task(function()
      local srv, port = H.echo_server()
      local c = H.connect(port)
      c:settimeout(0.1)
      assert.equal("ping", c:write("ping\n"):read("l"))
      compute(0.15)
      assert.equal("pong", c:write("pong\n"):read("l"))
      c:close(); srv:close()
    end)
  end)
end)

describe("a task's coroutine resumed by the script itself", function()
  -- The task sleeps; the script resumes its coroutine, whose sleep then
  -- returns at once, and which sleeps again under the script's resume.
  local SCRIPT = [[
    local sr = require "sockrun"
    local co
    local t = sr.spawn(function()
      co = coroutine.running()
      sr.sleep(0.01)
      sr.sleep(0.1)
      return "ran to the end"
    end)
    print(coroutine.resume(co))
    print(t:status(), t:join())
    print(sr.spawn(function() sr.sleep(0.01); return "others run" end):join())
  ]]
  local REST = "\tnil\tcancelled\tECANCELED\nothers run\n"

  it("cancels the task, which sockrun then leaves alone, in a host application",
    function()
      -- At a host's top level the coroutine may drive the loop itself, and
      -- the task's own timer fires meanwhile, its coroutine running.
      local out, err, code = H.run_lua(SCRIPT)
      assert.equal(0, code, err)
      assert.equal("true\tran to the end\ncancelled" .. REST, out)
      assert.matches("resumed or closed outside sockrun", err)
    end)

  it("cancels a task whose coroutine a script closed while it read, once its socket is collected",
    function()
      -- The closed coroutine's stack held the only reference to the
      -- socket: collected, it must first take the waiting task off it
      -- (the task's read timeout would find it there later).
      local out, err, code = H.run_script([[
        local sr = require "sockrun"
        local srv = assert(sr.listen("127.0.0.1", 0, function(c) c:read("a") end))
        local _, port = srv:getsockname()
        local co
        local t = sr.spawn(function()
          co = coroutine.running()
          local s = assert(sr.connect("127.0.0.1", port))
          s:settimeout(0.3)
          return s:read()
        end)
        sr.sleep(0.05) -- connected, and reading
        print(t:status(), coroutine.close(co))
        co = nil
        collectgarbage()
        collectgarbage()
        sr.sleep(0.5)
        print(t:status())
        srv:close()
      ]])
      assert.equal(0, code, err)
      assert.equal("waiting\ttrue\ncancelled\n", out)
      assert.matches("resumed or closed outside sockrun", err)
    end)

  it("cancels a chain of 20000 joined tasks whose coroutines a script closed",
    function()
      -- each one cancelled wakes the next: no C call inside a C call
      -- all the way down either
      local out, code = run_on_small_stack([[
        local sr = require "sockrun"
        local first = sr.spawn(function() sr.sleep(0.01) end)
        local last, cos = first, {}
        for i = 1, 20000 do
          local prev = last
          last = sr.spawn(function()
            cos[i] = coroutine.running()
            return prev:join()
          end)
        end
        for i = 1, 20000 do coroutine.close(cos[i]) end
        first:join()
        sr.sleep(0.05)
        print(last:status())
      ]])
      assert.equal(0, code)
      assert.equal("cancelled\n", out)
    end)

  it("cancels the task when the coroutine died under the script's resume",
    function()
      -- The binary runs the main chunk as a task: the coroutine cannot
      -- block there and dies with that error.
      local out, err, code = H.run_script(SCRIPT)
      assert.equal(0, code, err)
      assert.matches("^false\t[^\n]*cannot block outside a sockrun task", out)
      assert.matches("\nwaiting" .. REST .. "$", out)
      assert.matches("resumed or closed outside sockrun", err)
    end)
end)

describe("coroutine.yield inside a task", function()
  it("lets the other tasks run, then resumes the task", function()
    local order = {}
    local function worker(name)
      for i = 1, 3 do
        order[#order + 1] = name .. i
        coroutine.yield()
      end
      return name
    end
    local a = sr.spawn(worker, "a")
    local b = sr.spawn(worker, "b")
    assert.equal("a", a:join())
    assert.equal("b", b:join())
    assert.same({ "a1", "b1", "a2", "b2", "a3", "b3" }, order)
  end)

  -- A task that yields (or sleeps 0, or polls with a zero timeout) in a
  -- loop must still let the loop poll: timers fire, data arrives.
  local function spins_until(step, cond)
    local n = 0
    while not cond() and n < 200000 do
      n = n + 1
      step()
    end
    return cond()
  end

  it("in a loop, lets timers fire and I/O arrive meanwhile", function()
    H.in_task(function()
      local fired = false
      sr.spawn(function() sr.sleep(0.01); fired = true end)
      assert.is_true(spins_until(coroutine.yield, function() return fired end))
      local a, b = H.pair()
      sr.spawn(function() sr.sleep(0.01); a:write("x") end)
      local got
      sr.spawn(function() got = b:read(1) end)
      assert.is_true(spins_until(coroutine.yield, function() return got == "x" end))
      a:close(); b:close()
    end)
  end)
end)

describe("a zero-delay wait in a loop", function()
  it("sr.sleep(0) lets timers fire meanwhile", function()
    H.in_task(function()
      local fired = false
      sr.spawn(function() sr.sleep(0.01); fired = true end)
      local n = 0
      while not fired and n < 200000 do
        n = n + 1
        sr.sleep(0)
      end
      assert.is_true(fired)
    end)
  end)

  it("a read with a zero timeout, polled, gets the data once it comes", function()
    H.in_task(function()
      local a, b = H.pair()
      sr.spawn(function() sr.sleep(0.01); a:write("hello\n") end)
      b:settimeout(0)
      local n, line = 0, nil
      repeat
        n = n + 1
        line = b:read("l")
      until line or n >= 200000
      assert.equal("hello", line)
      a:close(); b:close()
    end)
  end)
end)

describe("sr.run", function()
  it("runs until no work is left", function()
    local a = sr.spawn(function() sr.sleep(0.02) end)
    local b = sr.spawn(function() sr.sleep(0.01) end)
    assert.is_true(sr.run())
    assert.equal("done", a:status())
    assert.equal("done", b:status())
  end)

  it("returns at once when there is nothing to do", function()
    assert.is_true(sr.run())
  end)

  it("spawns fn with its arguments and runs it to the end", function()
    local got
    assert.is_true(sr.run(function(x, y)
      sr.sleep(0.01)
      got = { x, y, sr.current() ~= nil }
    end, "a", "b"))
    assert.same({ "a", "b", true }, got)
  end)

  it("raises when called inside a task", function()
    local t = sr.spawn(function() return pcall(sr.run) end)
    assert_raised("inside a task", t:join())
  end)

  it("raises when given something that is not a function", function()
    assert_raised("bad argument", pcall(sr.run, 42))
  end)
end)

describe("sr.shutdown", function()
  it("raises for a grace period that is not a number >= 0, and shuts nothing",
    function()
      local srv, port = H.echo_server()
      H.raises(function() return sr.shutdown(-1) end,
        "bad argument #1 to 'shutdown'")
      H.raises(function() return sr.shutdown("soon") end,
        "bad argument #1 to 'shutdown'")
      assert_echoes(port, "still serving")
      srv:close()
    end)
end)

describe("sr.stop", function()
  it("makes sr.run return while a server still listens", function()
    local srv, port = H.echo_server()
    local stopper = sr.spawn(function() sr.sleep(0.02); sr.stop() end)
    assert.is_true(sr.run())
    assert.equal("done", stopper:status())
    -- still serving afterwards
    assert_echoes(port, "still here")
    srv:close()
  end)

  it("does not stop a later sr.run", function()
    local stopper = sr.spawn(function() sr.sleep(0.01); sr.stop() end)
    sr.run()
    stopper:join()
    local t = sr.spawn(function() sr.sleep(0.01); return "ran" end)
    assert.is_true(sr.run())
    assert.equal("done", t:status())
  end)

  it("returns true", function()
    local t = sr.spawn(function() sr.sleep(0); return sr.stop() end)
    sr.run()
    assert.is_true(t:join())
  end)
end)

describe("sr.step", function()
  it("returns true while work remains, false once it is done", function()
    local t = sr.spawn(function() sr.sleep(0.03) end)
    assert.is_true(sr.step())
    local deadline = sr.now() + 5
    local n = 0
    while sr.step() and sr.now() < deadline and n < 1e7 do n = n + 1 end
    assert.equal("done", t:status())
    assert.is_false(sr.step())
  end)

  it("returns false when nothing is left", function()
    assert.is_false(sr.step())
  end)

  it("raises when called inside a task", function()
    local t = sr.spawn(function() return pcall(sr.step) end)
    assert_raised("inside a task", t:join())
  end)

  -- A finalizer runs inside whatever allocates, a sockrun call included:
  -- running the loop there could free a socket under that call.
  it("raises when called from a finalizer, as blocking calls do", function()
    local got = {}
    setmetatable({}, { __gc = function()
      got.step = table.pack(pcall(sr.step))
      got.sleep = table.pack(pcall(sr.sleep, 0))
    end })
    collectgarbage()
    collectgarbage()
    assert.is_false(got.step[1])
    assert.matches("sr.step cannot be called from a finalizer", got.step[2], 1, true)
    assert.is_false(got.sleep[1])
    assert.matches("cannot block in a finalizer", got.sleep[2], 1, true)
  end)

  it("says so for a finalizer that runs inside a task too", function()
    H.in_task(function()
      local got
      setmetatable({}, { __gc = function() got = table.pack(pcall(sr.sleep, 0)) end })
      collectgarbage()
      collectgarbage()
      assert.is_false(got[1])
      assert.matches("cannot block in a finalizer", got[2], 1, true)
    end)
  end)
end)

describe("sr.backend_fd and sr.backend_timeout", function()
  it("give the loop's descriptor", function()
    local fd = sr.backend_fd()
    assert.equal("integer", math.type(fd))
    assert.is_true(fd >= 0)
  end)

  it("give -1 or the milliseconds to the next timer", function()
    local ms = sr.backend_timeout()
    assert.equal("integer", math.type(ms))
    assert.is_true(ms == -1 or ms >= 0)
    local t = sr.spawn(function() sr.sleep(10) end)
    ms = sr.backend_timeout()
    assert.equal("integer", math.type(ms))
    assert.is_true(ms >= 0)
    t:cancel()
  end)
end)

describe("sr.now", function()
  it("is a number that increases across a sleep", function()
    local a = sr.now()
    assert.equal("number", type(a))
    sr.sleep(0.02)
    local b = sr.now()
    assert.is_true(b > a)
  end)
end)

describe("sr.onerror", function()
  it("receives the error, a traceback and the failed task", function()
    local got
    H.quiet_errors(function(err, tb, task) got = { err = err, tb = tb, task = task } end)
    local t = sr.spawn(function() sr.sleep(0.01); error("hook me") end)
    t:join()
    assert.is_table(got)
    assert.matches("hook me", got.err)
    assert.equal("string", type(got.tb))
    assert.matches("stack traceback", got.tb)
    assert.matches("hook me", got.tb)
    assert.equal(t, got.task)
  end)

  it("gets the error of a <close> that raised while the task failed, the first error in the traceback",
    function()
      local got
      H.quiet_errors(function(err, tb) got = { err = err, tb = tb } end)
      local t = sr.spawn(function()
        local _ <close> = setmetatable({}, { __close = function() error("in close") end })
        sr.sleep(0.01)
        error("first")
      end)
      local _, joined = t:join()
      assert.matches("in close", joined)
      assert.matches("in close", got.err)
      assert.matches("^[^\n]*in close\n%(raised closing a to%-be%-closed variable, after: [^\n]*first\n",
        got.tb)
      assert.matches("stack traceback", got.tb)
    end)

  it("receives a non-string error object as it was raised", function()
    local got
    local obj = { code = 42 }
    H.quiet_errors(function(err) got = err end)
    sr.spawn(function() error(obj) end)
    assert.equal(obj, got)
  end)

  it("sends what the hook writes on a socket, as a task's writes", function()
    local c, a = H.pair("tcp")
    H.quiet_errors(function(err) c:write("hook: ", err:match("boom"), "\n") end)
    sr.spawn(function() sr.sleep(0.01); error("boom") end)
    a:settimeout(2)
    assert.equal("hook: boom", a:read("l"))
    c:close()
    a:close()
  end)

  it("is not called for tasks that end normally or are cancelled", function()
    local calls = 0
    H.quiet_errors(function() calls = calls + 1 end)
    sr.spawn(function() end):join()
    local t = sr.spawn(function() sr.sleep(5) end)
    t:cancel()
    assert.equal(0, calls)
  end)

  it("returns true and the hook it replaces, nil for the default", function()
    local function a() end
    local function b() end
    H.defer(function() sr.onerror(nil) end)
    assert.same({ true, nil }, { sr.onerror(a) })
    assert.same({ true, a }, { sr.onerror(b) })
    assert.same({ true, b }, { sr.onerror(nil) })
    assert.same({ true, nil }, { sr.onerror(nil) })
  end)

  it("is restored to the default by sr.onerror(nil)", function()
    local calls = 0
    sr.onerror(function() calls = calls + 1 end)
    assert.is_true(sr.onerror(nil))
    -- the default reports to stderr: check it through the binary
    local out, err, code = H.run_script([[
      local sr = require "sockrun"
      local calls = 0
      sr.onerror(function() calls = calls + 1 end)
      sr.onerror(nil)
      local t = sr.spawn(function() error("default report") end)
      print(calls, t:status())
    ]])
    assert.equal(0, calls)
    assert.equal(0, code)
    assert.equal("0\tfailed\n", out)
    assert.matches("sockrun:", err)
    assert.matches("default report", err)
    assert.matches("stack traceback", err)
  end)

  it("survives an error raised inside the hook", function()
    local out, err, code = H.run_script([[
      local sr = require "sockrun"
      sr.onerror(function() error("hook broke") end)
      sr.spawn(function()
        local t = sr.spawn(function() sr.sleep(0.01); error("task broke") end)
        local ok, msg, ecode = t:join()
        local other = sr.spawn(function() sr.sleep(0.01); return "alive" end)
        print(ok, ecode, other:join())
      end)
    ]])
    assert.equal(0, code)
    assert.equal("nil\tETASK\talive\n", out)
    assert.matches("hook broke", err)
  end)

  it("raises when given something that is not a function", function()
    assert_raised("bad argument #1", pcall(sr.onerror, 42))
  end)
end)

describe("sr.signal", function()
  local SIGUSR1 = 10

  -- sr.signal(name, handler), undone when the test ends; returns its result.
  local function watch(name, handler)
    local ok = sr.signal(name, handler)
    H.defer(function() sr.signal(name, nil) end)
    return ok
  end

  it("runs the handler in a task when the signal arrives", function()
    local got
    assert.is_true(watch("SIGUSR1", function(name)
      got = { name = name, task = sr.current() }
    end))
    os.execute("kill -USR1 " .. H.pid())
    assert.is_true(wait_until(function() return got ~= nil end))
    assert.equal("SIGUSR1", got.name)
    assert.is_not_nil(got.task)
    assert.equal("sockrun.task", getmetatable(got.task).__name)
  end)

  it("accepts the name without the SIG prefix", function()
    local n = 0
    assert.is_true(watch("USR1", function() n = n + 1 end))
    os.execute("kill -USR1 " .. H.pid())
    assert.is_true(wait_until(function() return n == 1 end))
  end)

  it("replaces the handler when called again", function()
    local first, second = 0, 0
    sr.signal("SIGUSR1", function() first = first + 1 end)
    watch("SIGUSR1", function() second = second + 1 end)
    os.execute("kill -USR1 " .. H.pid())
    assert.is_true(wait_until(function() return second == 1 end))
    assert.equal(0, first)
  end)

  it("stops watching with sr.signal(name, nil)", function()
    sr.signal("SIGUSR1", function() end)
    assert.is_true(catches_signal(SIGUSR1))
    assert.is_true(sr.signal("SIGUSR1", nil))
    sr.step()
    assert.is_false(catches_signal(SIGUSR1))
  end)

  it("does not keep the loop alive", function()
    watch("SIGUSR1", function() end)
    assert.is_false(sr.step())
    assert.is_true(sr.run())
  end)

  it("raises on an unknown signal name", function()
    local err = assert_raised("bad argument #1",
      pcall(sr.signal, "SIGNOPE", function() end))
    assert.matches("SIGNOPE", err)
  end)

  it("raises when the handler is not a function", function()
    assert_raised("bad argument #2", pcall(sr.signal, "SIGUSR1", 42))
  end)
end)

describe("a blocking call outside any task", function()
  it("raises in a foreign coroutine inside a task, pointing to sr.spawn", function()
    local t = sr.spawn(function()
      return pcall(coroutine.wrap(function() sr.sleep(0.01) end))
    end)
    assert_raised("sr%.spawn", t:join(5))
  end)

  it("raises in a foreign coroutine inside a task once the loop runs it", function()
    local t = sr.spawn(function()
      sr.sleep(0) -- from here on the task is resumed by the loop
      return pcall(coroutine.wrap(function() sr.sleep(0.01) end))
    end)
    assert_raised("sr%.spawn", t:join(5))
    assert.equal("done", t:status())
  end)

  it("raises in a table.sort comparator inside a task", function()
    local t = sr.spawn(function()
      sr.sleep(0)
      return pcall(table.sort, { 3, 1, 2 }, function(a, b)
        sr.sleep(0)
        return a < b
      end)
    end)
    assert_raised("sr%.spawn", t:join(5))
  end)

  it("raises in a __tostring metamethod inside a task", function()
    local obj = setmetatable({}, { __tostring = function()
      sr.sleep(0)
      return "obj"
    end })
    local t = sr.spawn(function() return pcall(tostring, obj) end)
    assert_raised("sr%.spawn", t:join(5))
  end)

  it("raises in a string.gsub callback inside a task", function()
    local t = sr.spawn(function()
      return pcall(string.gsub, "abc", "%w", function(c) sr.sleep(0); return c end)
    end)
    assert_raised("sr%.spawn", t:join(5))
  end)

  it("works in a foreign coroutine at top level by driving the loop", function()
    local ticks = 0
    local bg = sr.spawn(function()
      for _ = 1, 2 do sr.sleep(0.005); ticks = ticks + 1 end
    end)
    local co = coroutine.wrap(function()
      local r = sr.sleep(0.05)
      return r, "after"
    end)
    local r, after = co()
    assert.is_true(r)
    assert.equal("after", after)
    bg:join()
    assert.equal(2, ticks)
  end)

  it("works for socket calls in a foreign coroutine at top level", function()
    local srv, port = H.echo_server()
    local co = coroutine.wrap(function()
      local c = H.connect(port)
      c:write("ping\n")
      local line = c:read("l")
      c:close()
      return line
    end)
    assert.equal("ping", co())
    srv:close()
  end)
end)

describe("an error in a task", function()
  it("ends that task only: other tasks and a server keep running", function()
    H.quiet_errors()
    local srv, port = H.echo_server()
    local survivor = sr.spawn(function()
      sr.sleep(0.04)
      return "survived"
    end)
    local failing = sr.spawn(function()
      sr.sleep(0.01)
      error("one task fails")
    end)
    H.assert_task_failed(failing:join())
    assert.equal("survived", survivor:join())
    assert_echoes(port, "served")
    srv:close()
  end)

  it("in a connection handler does not stop the server", function()
    H.quiet_errors()
    local srv, port = H.server(function(c)
      local line = c:read("l")
      if line == "fail" then error("handler fails") end
      c:write("ok " .. line .. "\n")
    end)
    local c1 = H.connect(port)
    c1:write("fail\n")
    H.assert_fail("EOF", c1:read("l"))
    c1:close()
    local c2 = H.connect(port)
    c2:write("next\n")
    assert.equal("ok next", c2:read("l"))
    c2:close()
    srv:close()
  end)
end)
