-- The REPL of the sockrun binary (issue 3), driven through a real
-- pseudo-terminal (a tmux pane: raw mode, prompt, line editor, Ctrl-C,
-- Ctrl-D, completion, background output, history) and through a pipe
-- (lines in order, results printed, errors on stderr, EOF exits).
-- Every run gets SOCKRUN_HISTORY pointing at a temporary file.
local H = require "helper"
local sr = H.sr

-- Local helpers ------------------------------------------------------------

local SOCKRUN = os.getenv("SOCKRUN") or "build/sockrun"
if SOCKRUN:sub(1, 1) ~= "/" then
  SOCKRUN = (os.getenv("PWD") or ".") .. "/" .. SOCKRUN
end

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

-- Run a shell command; returns its stdout and exit status.
local function sh(cmd)
  local p = io.popen(cmd, "r")
  local out = p:read("a")
  local ok, _, code = p:close()
  return out, ok and 0 or code
end

local function slurp(path)
  local f = io.open(path)
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

local function spit(path, content)
  local f = assert(io.open(path, "w"))
  f:write(content)
  f:close()
end

local getpid = H.pid

-- Cleanups run after each test, the last one first, pass or fail.
local cleanups = {}
local function defer(fn) cleanups[#cleanups + 1] = fn end

-- A fresh temporary path, removed when the test ends.
local counter = 0
local function tmp(name)
  counter = counter + 1
  local path = string.format("/tmp/srspec-repl-%d-%d-%s", getpid(), counter,
    name or "tmp")
  defer(function() os.remove(path) end)
  return path
end

-- Fail the test that left a socket or task of this process behind.
local function assert_clean()
  local core = sr._core
  for _ = 1, 200 do
    local nsock, ntask = core.counts()
    if nsock == 0 and ntask == 0 then return end
    sr.step()
    nsock, ntask = core.counts()
    if nsock ~= 0 or ntask ~= 0 then os.execute("sleep 0.005") end
  end
  local nsock, ntask = core.counts()
  assert(nsock == 0, nsock .. " socket(s) left open by this test")
  assert(ntask == 0, ntask .. " task(s) left running by this test")
end

after_each(function()
  local list = cleanups
  cleanups = {}
  for i = #list, 1, -1 do pcall(list[i]) end
  assert_clean()
end)

-- The REPL through a pipe: `input` is fed to its stdin by `cat`; returns
-- stdout, stderr, exit status (124 on timeout). opts: env (a prefix of
-- VAR=value words), history (path).
local function pipe(input, args, opts)
  opts = opts or {}
  local inpath, errpath = tmp("in"), tmp("err")
  spit(inpath, input)
  local cmd = string.format(
    "cat %s | env SOCKRUN_HISTORY=%s %s timeout 10 %s %s 2>%s",
    q(inpath), q(opts.history or tmp("history")), opts.env or "",
    q(SOCKRUN), args or "", q(errpath))
  local out, code = sh(cmd)
  return out, slurp(errpath) or "", code
end

-- Pause without driving this process's loop: the peers here are other
-- processes (a top-level sr.sleep would only add the loop's own quirks).
local function nap(seconds) os.execute("sleep " .. seconds) end

-- Lines of a string, without the last empty one.
local function lines(s)
  local t = {}
  for l in (s .. "\n"):gmatch("(.-)\n") do t[#t + 1] = l end
  if t[#t] == "" then t[#t] = nil end
  return t
end

-- A sockrun process running the script `src`, which must print a port
-- number first; bounded by `timeout`, stopped by its PID after the test.
-- Returns the port.
local function peer(src)
  local script, out = tmp("peer.lua"), tmp("peer.out")
  spit(script, src)
  local pidtext = sh(string.format("timeout 20 %s %s >%s 2>&1 </dev/null & echo $!",
    q(SOCKRUN), q(script), q(out)))
  local peer_pid = assert(tonumber(pidtext:match("%d+")), "no PID")
  defer(function() os.execute("kill " .. peer_pid .. " 2>/dev/null") end)
  for _ = 1, 100 do
    local port = (slurp(out) or ""):match("^(%d+)\n")
    if port then return tonumber(port) end
    nap(0.05)
  end
  error("the peer printed no port: " .. (slurp(out) or ""))
end

-- The REPL in a tmux pane --------------------------------------------------

local Term = {}
Term.__index = Term

local WAIT_STEPS, WAIT_STEP = 120, 0.05 -- at most ~6 s per wait

-- Start `sockrun args` in a fresh tmux server (its own socket, so no other
-- tmux session is touched) and wait for the first prompt. opts: history
-- (path), env (prefix of VAR=value words). Killed when the test ends.
local function term(args, opts)
  opts = opts or {}
  counter = counter + 1
  local t = setmetatable({
    sock = string.format("srspec-%d-%d", getpid(), counter),
    name = "s" .. counter,
    status = tmp("status"),
    history = opts.history or tmp("history"),
  }, Term)
  t.tmux = "tmux -f /dev/null -L " .. t.sock
  local cmd = string.format("env SOCKRUN_HISTORY=%s %s %s %s; echo $? > %s",
    q(t.history), opts.env or "", q(SOCKRUN), args or "", q(t.status))
  local _, code = sh(string.format(
    "%s new-session -d -s %s -x 200 -y 50 %s 2>&1", t.tmux, t.name, q(cmd)))
  assert.equal(0, code, "tmux new-session failed")
  defer(function() t:kill() end)
  t:wait(function(ls)
    return ls[1] and ls[1]:find("^sockrun ") and ls[#ls] == ">"
  end, "the banner and the first prompt")
  return t
end

-- Where tmux keeps its sockets (removed after kill-server).
local TMUX_DIR = string.format("%s/tmux-%s", os.getenv("TMUX_TMPDIR") or "/tmp",
  (sh("id -u"):gsub("%s", "")))

function Term:kill()
  sh(self.tmux .. " kill-server >/dev/null 2>&1")
  os.remove(TMUX_DIR .. "/" .. self.sock)
end

-- The pane's lines (history included, wrapped lines joined), without
-- trailing blanks and without the empty lines below the last text.
function Term:screen()
  local out = sh(string.format("%s capture-pane -p -J -S - -t %s 2>/dev/null",
    self.tmux, self.name))
  local ls = {}
  for l in out:gmatch("([^\n]*)\n") do ls[#ls + 1] = (l:gsub("%s+$", "")) end
  while #ls > 0 and ls[#ls] == "" do ls[#ls] = nil end
  return ls
end

-- Poll the pane until pred(lines) is true; fail with the screen if it never
-- is.
function Term:wait(pred, what)
  local ls
  for _ = 1, WAIT_STEPS do
    ls = self:screen()
    if pred(ls) then return ls end
    nap(WAIT_STEP)
  end
  error(string.format("timed out waiting for %s; the screen:\n%s",
    what or "the screen", table.concat(ls, "\n")), 2)
end

-- Wait until some line equals `line` (or contains it, when plain).
function Term:wait_line(line, contains)
  return self:wait(function(ls)
    for _, l in ipairs(ls) do
      if l == line or (contains and l:find(line, 1, true)) then return true end
    end
  end, string.format("the line %q", line))
end

-- Wait until the last line is exactly `line`.
function Term:wait_last(line)
  return self:wait(function(ls) return ls[#ls] == line end,
    string.format("%q as the last line", line))
end

-- Type text literally (no key names), or press named keys.
function Term:type(text)
  if text == "" then return end
  sh(string.format("%s send-keys -l -t %s %s", self.tmux, self.name, q(text)))
end

function Term:key(...)
  local names = {}
  for i = 1, select("#", ...) do names[i] = q((select(i, ...))) end
  sh(string.format("%s send-keys -t %s %s", self.tmux, self.name,
    table.concat(names, " ")))
end

-- Index of the last line equal to `line`, or nil.
local function last_index(ls, line)
  for i = #ls, 1, -1 do if ls[i] == line then return i end end
end

-- Type a command and Enter at the "> " prompt, wait until it has finished
-- (its echo is followed by a fresh prompt as the last line); returns the
-- lines it printed in between.
function Term:run(cmd, prompt)
  local echo = ((prompt or "> ") .. cmd):gsub("%s+$", "")
  self:type(cmd)
  self:key("Enter")
  local ls = self:wait(function(ls)
    local i = last_index(ls, echo)
    return i and i < #ls and ls[#ls] == ">"
  end, string.format("%q to finish", cmd))
  local out, i = {}, last_index(ls, echo)
  for j = i + 1, #ls - 1 do out[#out + 1] = ls[j] end
  return out
end

-- The cursor's column (0-based).
function Term:cursor_x()
  return tonumber((sh(string.format("%s display -p -t %s '#{cursor_x}'",
    self.tmux, self.name))))
end

-- Paste text as a terminal does (bracketed, when the REPL asked for it).
function Term:paste(text)
  local path = tmp("paste")
  spit(path, text)
  sh(string.format("%s load-buffer %s && %s paste-buffer -p -d -t %s",
    self.tmux, q(path), self.tmux, self.name))
end

-- Run a command that waits, cancel it with Ctrl-C, check the REPL says so;
-- returns the screen.
function Term:cancel(cmd)
  self:type(cmd)
  self:key("Enter")
  self:wait_last("> " .. cmd)
  self:key("C-c")
  local ls = self:wait_last(">")
  assert.equal("^C (cancelled)", ls[#ls - 1])
  return ls
end

-- Wait until the REPL process has exited; returns its exit status.
function Term:wait_exit()
  for _ = 1, WAIT_STEPS do
    local s = slurp(self.status)
    if s and s:match("%d") then return tonumber(s:match("%d+")) end
    nap(WAIT_STEP)
  end
  error("timed out waiting for the REPL to exit; the screen:\n" ..
    table.concat(self:screen(), "\n"), 2)
end

-- Press Ctrl-D on an empty line and return the exit status.
function Term:quit()
  self:key("C-d")
  return self:wait_exit()
end

local HAVE_TMUX = select(2, sh("command -v tmux >/dev/null 2>&1")) == 0
local HAVE_NC = select(2, sh("command -v nc >/dev/null 2>&1")) == 0

-- The REPL still evaluates what is typed, and exits with 0 on Ctrl-D.
local function assert_recovers(t)
  assert.same({ "3" }, t:run("1 + 2"))
  assert.equal(0, t:quit())
end

-- A REPL command that starts a server on a free port with the given
-- handler source and prints the port.
local function listen_cmd(handler)
  return 'srv = sr.listen("127.0.0.1", 0, ' .. handler ..
    '); print((select(2, srv:getsockname())))'
end

-- On a terminal -------------------------------------------------------------

describe("sockrun on a terminal", function()
  if not HAVE_TMUX then
    it("needs tmux to drive a pseudo-terminal (install tmux)", function()
      error("tmux not found: these tests need it (tools/deps.sh)")
    end)
    return
  end

  it("shows a banner, then the prompt, with sr bound", function()
    local t = term()
    local ls = t:screen()
    assert.matches("^sockrun %S+ %(Lua 5%.4%)", ls[1])
    assert.same({ "true" }, t:run('sr == require("sockrun")'))
    assert.equal(0, t:quit())
  end)

  it("exits with status 0 on Ctrl-D at an empty line, closing its servers",
    function()
      local t = term()
      local port = tonumber(t:run(listen_cmd("function(c) end"))[1])
      assert.is_number(port)
      assert.equal(0, t:quit())
      local s = assert(sr.socket("inet", "stream"))
      local ok, _, code = s:connect("127.0.0.1", port)
      s:close()
      assert.is_nil(ok)
      assert.equal("ECONNREFUSED", code)
    end)

  it("serves an outside client (nc) while the prompt is idle", function()
    if not HAVE_NC then error("nc not found (tools/deps.sh)") end
    local t = term()
    local port = tonumber(t:run(listen_cmd(
      'function(c) local l = c:read("l") c:write("you said " .. l .. "\\n") '
      .. 'print("served " .. l) end'))[1])
    assert.is_number(port)
    local out, code = sh(string.format(
      "printf 'hi\\n' | timeout 5 nc -N 127.0.0.1 %d", port))
    assert.equal(0, code)
    assert.equal("you said hi\n", out)
    -- the handler's print lands above a redrawn, still idle prompt
    local ls = t:wait(function(ls)
      return last_index(ls, "served hi") and ls[#ls] == ">"
    end, "the handler's output")
    assert.equal(#ls - 1, last_index(ls, "served hi"))
    assert.same({ "2" }, t:run("1 + 1"))
    assert.equal(0, t:quit())
  end)

  it("connects from the prompt and prints the reply", function()
    local port = peer([[
      local sr = require "sockrun"
      local srv
      srv = sr.listen("127.0.0.1", 0, function(c)
        local l = c:read("l")
        c:write("pong " .. tostring(l) .. "\n")
        c:close()
        srv:close()
      end)
      print((select(2, srv:getsockname())))
      io.stdout:flush()
    ]])
    local t = term()
    assert.same({}, t:run(string.format('c = sr.connect("127.0.0.1", %d)',
      port)))
    assert.same({ "true" }, t:run('c:write("ping\\n") == c'))
    -- the read blocks the REPL until the peer replies
    assert.same({ "pong ping" }, t:run('c:read("l")'))
    local eof = t:run('c:read("l")') -- the pane shows tabs as spaces
    assert.equal(1, #eof)
    assert.matches("^nil%s+end of file%s+EOF$", eof[1])
    t:run("c:close()")
    assert.equal(0, t:quit())
  end)

  it("continues a multi-line function with the \">> \" prompt", function()
    local t = term()
    t:type("function double(x)")
    t:key("Enter")
    t:wait_last(">>")
    t:type("return x * 2")
    t:key("Enter")
    t:wait(function(ls) return ls[#ls - 1] == ">> return x * 2"
      and ls[#ls] == ">>" end, "a second continuation prompt")
    assert.same({}, t:run("end", ">> "))
    assert.same({ "42" }, t:run("double(21)"))
    assert.equal(0, t:quit())
  end)

  it("prints a table result nested, with keys sorted", function()
    local t = term()
    assert.same({ '{ a = 1, b = "two", c = { 1, 2, { x = true } } }' },
      t:run('{ c = { 1, 2, { x = true } }, b = "two", a = 1 }'))
    assert.equal(0, t:quit())
  end)

  it("prints an error with its traceback and keeps going", function()
    local t = term()
    local out = t:run('error("boom")')
    assert.equal("stdin:1: boom", out[1])
    assert.equal("stack traceback:", out[2])
    assert_recovers(t)
  end)

  it("cancels a blocked read on Ctrl-C and prints \"^C (cancelled)\"",
    function()
      local t = term()
      t:run(listen_cmd("function(c) sr.sleep(30) end"))
      assert.same({}, t:run("c = sr.connect(srv:getsockname())"))
      local ls = t:cancel('c:read("l")')
      assert.equal('> c:read("l")', ls[#ls - 2])
      -- the REPL and its loop go on, the socket still usable
      assert.same({ "3" }, t:run("1 + 2"))
      assert.same({ "true" }, t:run('c:write("x\\n") == c'))
      assert.equal(0, t:quit())
    end)

  it("takes pasted text as it is, a Tab in it not completing, each line run",
    function()
      local t = term()
      t:paste("value = 1\nv\t= 2\nprint(value, v)\n")
      t:wait(function(ls) return ls[#ls - 1] == "1       2" end, "1, a Tab, 2")
      assert.equal(0, t:quit())
    end)

  it("leaves no blank line after a line exactly as wide as the terminal", function()
    local t = term()
    local cmd = "print(1)--" .. string.rep("x", 200 - 2 - 10) -- prompt + 198
    assert.same({ "1" }, t:run(cmd))
    assert.equal(0, t:quit())
  end)

  it("redraws a wrapped line in place after the terminal is resized", function()
    local t = term()
    local line = 'x = "' .. string.rep("abcdefghij", 25) .. '"' -- 256 columns
    t:type(line)
    t:wait_last("> " .. line)
    -- narrower each time (widening lets tmux pull rows of old renders
    -- back from its history, which no program can clear)
    for _, width in ipairs({ 120, 77 }) do
      sh(string.format("%s resize-window -t %s -x %d -y 50", t.tmux, t.name, width))
      assert(H.wait_for(function()
        return tonumber((sh(string.format("%s display -p -t %s '#{pane_width}'",
          t.tmux, t.name)))) == width
      end, 5, 0.05))
      nap(0.3) -- the pane's new size reaches the program (a redraw racing
      -- a resize is drawn for the old width, by any program)
      t:key("Left", "Right")
      -- on the visible screen (tmux's rewrap may push rows of the old
      -- render into its history, out of any program's reach)
      local out
      local ok = H.wait_for(function()
        out = sh(string.format("%s capture-pane -p -J -t %s", t.tmux, t.name))
        local _, n = out:gsub('> x = "', "")
        return n == 1 and out:find("> " .. line, 1, true) ~= nil
      end, 10, 0.05)
      assert(ok, "one copy of the line at width " .. width .. ":\n" .. out)
    end
    t:key("Enter")
    assert.same({ string.rep("abcdefghij", 25) }, t:run("x"))
    assert.equal(0, t:quit())
  end)

  it("puts the cursor after wide characters at two columns each", function()
    local t = term()
    t:type('x = "\u{65E5}\u{672C}\u{8A9E}"') -- three CJK characters
    t:wait(function() return t:cursor_x() == 2 + 5 + 6 + 1 end, "the cursor at 14")
    t:key("Left", "Left")
    t:type("Q")
    t:wait(function() return t:cursor_x() == 2 + 5 + 4 + 1 end, "the cursor at 12")
    t:key("Enter")
    assert.same({ "\u{65E5}\u{672C}Q\u{8A9E}" }, t:run("x"))
    assert.equal(0, t:quit())
  end)

  it("shows a pasted Tab as spaces to the next stop of 8, the cursor in step", function()
    local t = term()
    t:paste("x\t= 12345")
    t:wait(function() return t:cursor_x() == 15 end, "the cursor at 15")
    t:key("Left", "Left", "Left")
    t:type("Z")
    t:wait(function() return t:cursor_x() == 13 end, "the cursor at 13")
    t:key("End", "C-u")
    t:paste("y\t= '\27[31m'\n") -- an Escape in pasted text is dropped
    assert.same({ "[31m" }, t:run("y"))
    assert.equal(0, t:quit())
  end)

  it("edits by words: Ctrl-W takes the word and the blanks after it, Alt-b/Alt-f move",
    function()
      local t = term()
      t:type('x = "A" zz ')
      t:key("C-w")
      t:key("Enter")
      t:wait_line('> x = "A"')
      assert.same({ "A" }, t:run("x"))
      t:type("ab")
      t:key("M-b")
      t:type("(")
      t:key("M-f")
      t:type(")")
      t:key("Enter")
      t:wait_line("> (ab)")
      assert.equal(0, t:quit())
    end)

  it("interrupts a command that computes and never yields on Ctrl-C", function()
    local t = term()
    t:type("n = 0; while true do n = n + 1 end")
    t:key("Enter")
    t:wait_last("> n = 0; while true do n = n + 1 end")
    nap(0.2)
    t:key("C-c")
    t:wait_line("interrupted!", true)
    t:wait_last(">")
    -- the REPL goes on, and Ctrl-C still cancels a waiting command
    assert.same({ "true" }, t:run("n > 0"))
    t:cancel("sr.sleep(30)")
    assert.equal(0, t:quit())
  end)

  it("exits on a second Ctrl-C that nothing took (a spawned task computes forever)",
    function()
      local saved = tmp("stty")
      local t = term("; st=$?; stty -a > " .. q(saved) .. "; (exit $st)")
      t:type("sr.spawn(function() while true do end end)")
      t:key("Enter")
      t:wait_last("> sr.spawn(function() while true do end end)")
      nap(0.2)
      t:key("C-c")
      nap(0.2)
      t:key("C-c") -- ("sockrun: interrupted twice; exiting")
      assert.equal(130, t:wait_exit())
      local modes = assert(slurp(saved))
      assert.matches("[^-]icanon", modes)
      assert.matches("[^-]echo ", modes)
    end)

  it("cancels on a Ctrl-C typed ahead, the keys typed before it dropped",
    function()
      local t = term()
      t:key("s", "r", ".", "s", "l", "e", "e", "p", "(", "4", ")", "Enter",
        "a", "b", "c", "C-c")
      local ls = t:wait_last(">")
      assert.equal("^C (cancelled)", ls[#ls - 1])
      assert.same({ "3" }, t:run("1 + 2"))
      -- and in reads of their own: the Ctrl-C a signal by then
      t:type("sr.sleep(4)")
      t:key("Enter")
      t:wait_last("> sr.sleep(4)")
      t:type("abc")
      nap(0.1)
      t:key("C-c")
      ls = t:wait_last(">")
      assert.equal("^C (cancelled)", ls[#ls - 1])
      assert.same({ "3" }, t:run("1 + 2"))
      assert.equal(0, t:quit())
    end)

  it("keeps a command's output that does not end its line, the prompt below it",
    function()
      local t = term()
      assert.same({ "abc" }, t:run('do io.write("abc") end'))
      assert.same({ "x1" }, t:run('do io.stderr:write("x", 1) end'))
      assert.equal(0, t:quit())
    end)

  it("runs a line typed while a command waits once that command ends",
    function()
      local t = term()
      t:type('sr.sleep(0.3) print("slept")')
      t:key("Enter")
      t:type('"typed ahead"')
      t:key("Enter")
      local ls = t:wait(function(ls)
        return ls[#ls] == ">" and last_index(ls, "typed ahead")
      end, "both commands to finish")
      local i = assert(last_index(ls, "slept"))
      assert.is_true(i < last_index(ls, "typed ahead"))
      assert.equal(0, t:quit())
    end)

  it("drops the typed line on Ctrl-C at an idle prompt", function()
    local t = term()
    t:type("this is not run")
    t:wait_last("> this is not run")
    t:key("C-c")
    local ls = t:wait_last(">")
    assert.equal("> this is not run^C", ls[#ls - 1])
    assert.same({ "42" }, t:run("40 + 2"))
    -- also inside a multi-line chunk: back to a fresh "> " prompt
    t:type("function never()")
    t:key("Enter")
    t:wait_last(">>")
    t:key("C-c")
    t:wait(function(ls) return ls[#ls - 1] == ">> ^C" and ls[#ls] == ">" end,
      "a fresh prompt after ^C")
    assert.same({ "nil" }, t:run("never"))
    assert.equal(0, t:quit())
  end)

  it("exits on a Ctrl-D typed while a command runs, once it ends", function()
    local t = term()
    t:type("sr.sleep(0.5)")
    t:key("Enter")
    t:key("C-d")
    assert.equal(0, t:wait_exit())
  end)

  it("takes a byte no UTF-8 character starts with as a key, and goes on",
    function()
      local t = term()
      local port = tonumber(t:run(listen_cmd(
        'function(c) c:write("still here\\n") end'))[1])
      sh(string.format("%s send-keys -H -t %s ff", t.tmux, t.name))
      t:key("BSpace")
      assert.same({ "3" }, t:run("1 + 2"))
      local c = assert(sr.connect("127.0.0.1", port))
      c:settimeout(5)
      assert.equal("still here", c:read("l"))
      c:close()
      assert.equal(0, t:quit())
    end)

  it("reports a result that cannot be printed, and gives the prompt back",
    function()
      local t = term()
      local out = t:run('setmetatable({}, { __tostring = function() error("no text") end })')
      assert.matches("^error printing the results: ", out[1])
      assert_recovers(t)
    end)

  it("lets a task call io.write() with no arguments while the prompt shows",
    function()
      local t = term()
      t:run('sr.spawn(function() sr.sleep(0.2); io.write(); print("after") end)')
      t:wait_line("after")
      assert_recovers(t)
    end)

  it("rings the bell on <TAB> after a table whose __pairs raises", function()
    local t = term()
    t:run('bad = setmetatable({}, { __pairs = function() error("no") end })')
    t:type("bad.")
    t:key("Tab")
    t:key("C-u")
    assert_recovers(t)
  end)

  -- Type the line that ends the REPL; the shell's terminal must be back
  -- in its normal modes afterwards.
  local function assert_terminal_restored_after(line)
    local saved = tmp("stty")
    -- what follows sockrun on the pane's command line runs after it exits
    local t = term("; stty -a > " .. q(saved))
    t:type(line)
    t:key("Enter")
    t:wait_exit()
    local modes = assert(slurp(saved))
    assert.matches("[^-]icanon", modes)
    assert.matches("[^-]echo ", modes)
    assert.matches("[^-]isig", modes)
  end

  it("leaves the terminal as it found it after os.exit()", function()
    assert_terminal_restored_after("os.exit(3)")
  end)

  it("leaves the terminal as it found it after sr.stop() at the prompt", function()
    assert_terminal_restored_after("sr.stop()")
  end)

  it("completes sr.li<TAB> to sr.listen", function()
    local t = term()
    t:type("sr.li")
    t:key("Tab")
    t:wait_last("> sr.listen")
    assert.same({ "true" }, t:run(" == sr.listen", "> sr.listen"))
    assert.equal(0, t:quit())
  end)

  it("completes methods after \":\" and globals", function()
    local t = term()
    assert.same({}, t:run('c = sr.socket("inet", "stream")'))
    t:type("c:getpe")
    t:key("Tab")
    t:wait_last("> c:getpe" .. "ername")
    t:key("C-u")
    t:wait_last(">")
    assert.same({}, t:run("c:close() some_unique_global = 7"))
    t:type("some_uni")
    t:key("Tab")
    t:wait_last("> some_unique_global")
    assert.same({ "7" }, t:run("", "> some_unique_global"))
    assert.equal(0, t:quit())
  end)

  it("lists the candidates when a completion is ambiguous", function()
    local t = term()
    assert.same({}, t:run("tt = { alpha = 1, alpine = 2 }"))
    t:type("tt.al")
    t:key("Tab")
    t:wait_last("> tt.alp") -- the common prefix first
    t:key("Tab")
    local ls = t:wait(function(ls)
      return ls[#ls] == "> tt.alp" and ls[#ls - 1] == "alpha  alpine"
    end, "the candidates listed above the redrawn line")
    assert.equal("> tt.alp", ls[#ls - 2])
    assert.same({ "1" }, t:run("ha", "> tt.alp"))
    assert.equal(0, t:quit())
  end)

  it("says on Ctrl-D that it waits for running handlers, and Ctrl-C ends them",
    function()
      local t = term()
      t:run(listen_cmd("function(c) sr.sleep(30) end"))
      assert.same({}, t:run("c = sr.connect(srv:getsockname())"))
      t:key("C-d")
      t:wait_line("sockrun: waiting up to 5 s for 1 connection handler to end", true)
      t:key("C-c")
      assert.equal(0, t:wait_exit())
    end)

  it("offers names starting with _ only for a partial name that does", function()
    local t = term()
    assert.same({}, t:run("tt = { _hidden = 1, shown = 2 }"))
    t:type("tt.")
    t:key("Tab")
    t:wait_last("> tt.shown")
    t:key("C-u")
    t:type("tt._")
    t:key("Tab")
    t:wait_last("> tt._hidden")
    t:key("C-u")
    -- after an expression, whose value is not known: nothing, not globals
    t:type('("abc"):r')
    t:key("Tab")
    t:key("Tab")
    nap(0.2)
    local ls = t:wait_last('> ("abc"):r')
    assert.is_nil(ls[#ls - 1]:find("rawequal", 1, true))
    t:key("C-u")
    assert.equal(0, t:quit())
  end)

  -- A task prints `code` 0.3 s from now while "half typed" is on the line:
  -- `shown` must come above the line, which stays.
  local function assert_printed_above_line(code, shown)
    local t = term()
    t:run("sr.spawn(function() sr.sleep(0.3) " .. code .. " end)")
    t:type("half typed")
    t:wait(function(l)
      return l[#l] == "> half typed" and l[#l - 1] == shown
    end, shown .. " above the line")
    t:key("C-u")
    return t
  end

  it("prints a task's number written above a half-typed line", function()
    assert.equal(0, assert_printed_above_line("io.write(42)", "42"):quit())
  end)

  it("keeps warnings off when the script turned them off (-i script.lua)", function()
    local path = tmp("off.lua")
    spit(path, "warn('@off')\n")
    local t = term("-i " .. q(path))
    t:run("warn('hidden'); print('shown')")
    local ls = t:screen()
    for _, l in ipairs(ls) do assert.is_nil(l:find("hidden", 1, true) and l:find("Lua warning")) end
    assert.equal(0, t:quit())
  end)

  it("prints a task's warn() above a half-typed line and keeps it", function()
    local t = assert_printed_above_line("warn('care', 'ful')", "Lua warning: careful")
    assert.same({}, t:run('warn("@off"); warn("hidden"); warn("@on")'))
    assert.equal(0, t:quit())
  end)

  it("prints background output above a half-typed line and keeps it",
    function()
      if not HAVE_NC then error("nc not found (tools/deps.sh)") end
      local t = term()
      local port = tonumber(t:run(listen_cmd(
        'function(c) print("bg: " .. c:read("l")) end'))[1])
      assert.is_number(port)
      t:type("20 + ")
      t:wait_last("> 20 +")
      local _, code = sh(string.format(
        "printf 'hello\\n' | timeout 5 nc -N 127.0.0.1 %d", port))
      assert.equal(0, code)
      local ls = t:wait(function(ls)
        return ls[#ls] == "> 20 +" and ls[#ls - 1] == "bg: hello"
      end, "the output above the redrawn prompt")
      assert.equal(tostring(port), ls[#ls - 2])
      assert.same({ "42" }, t:run("22", "> 20 + "))
      assert.equal(0, t:quit())
    end)

  it("keeps history across two runs (Up recalls the earlier lines)",
    function()
      local history = tmp("history")
      local t = term(nil, { history = history })
      assert.same({}, t:run("hist_value = 123"))
      assert.same({ "second" }, t:run('"second"'))
      assert.equal(0, t:quit())
      t:kill()
      local saved = slurp(history) or ""
      assert.is_truthy(saved:find("hist_value = 123", 1, true), saved)

      local t2 = term(nil, { history = history })
      t2:key("Up")
      t2:wait_last('> "second"')
      t2:key("Up")
      t2:wait_last("> hist_value = 123")
      assert.same({}, t2:run("", "> hist_value = 123"))
      assert.same({ "123" }, t2:run("hist_value"))
      assert.equal(0, t2:quit())
    end)

  it("makes a new history file private, and cuts a long one to its last 1000 lines",
    function()
      local history = tmp("history")
      os.remove(history)
      local t = term(nil, { history = history })
      assert.same({}, t:run("secret = 1"))
      assert.equal(0, t:quit())
      assert.equal("600", (sh("stat -c %a " .. q(history)):gsub("%s", "")))
      local lines = {}
      for i = 1, 2500 do lines[i] = "x" .. i end
      spit(history, table.concat(lines, "\n") .. "\n")
      t = term(nil, { history = history })
      t:key("Up")
      t:wait_last("> x2500")
      t:key("C-u")
      assert.equal(0, t:quit())
      local kept = {}
      for l in (slurp(history) or ""):gmatch("[^\n]+") do kept[#kept + 1] = l end
      assert.equal(1000, #kept)
      assert.equal("x1501", kept[1])
    end)

  it("runs -e code before the prompt with -e 'code' -i", function()
    local t = term("-e " .. q("from_e = 42") .. " -i")
    assert.same({ "42" }, t:run("from_e"))
    assert.equal(0, t:quit())
  end)

  it("runs a script first with -i script.lua, its servers still serving",
    function()
      local script = tmp("script.lua")
      spit(script, 'local sr = require "sockrun"\n' ..
        'srv = sr.listen("127.0.0.1", 0, function(c) ' ..
        'c:write("from script\\n") c:close() end)\n' ..
        'port = select(2, srv:getsockname())\n')
      local t = term("-i " .. q(script))
      local port = tonumber(t:run("port")[1])
      assert.is_number(port)
      assert.same({ "from script" },
        t:run(string.format('sr.connect("127.0.0.1", %d):read("l")', port)))
      assert.equal(0, t:quit())
    end)
end)

-- Through a pipe ------------------------------------------------------------

describe("sockrun on a pipe", function()
  it("prints expression results as lua5.4 does, values tab-separated",
    function()
      local out, err, code = pipe('1, "a"\nnil\n"bare"\nx = 5\nx\n' ..
        "true, nil, 2.5\n")
      assert.equal("", err)
      assert.equal(0, code)
      assert.equal('1\ta\nnil\nbare\n5\ntrue\tnil\t2.5\n', out)
    end)

  it("binds sr to the module", function()
    local out, err, code = pipe('sr == require("sockrun")\n')
    assert.equal("", err)
    assert.equal(0, code)
    assert.equal("true\n", out)
  end)

  it("prints tables nested, keys sorted, strings quoted inside", function()
    local out, err, code = pipe(
      '{ b = { 1, 2 }, a = 1, [3] = "x" }\n{}\n{ "s", { k = "v" } }\n')
    assert.equal("", err)
    assert.equal(0, code)
    assert.equal('{ [3] = "x", a = 1, b = { 1, 2 } }\n{}\n' ..
      '{ "s", { k = "v" } }\n', out)
  end)

  it("marks a cycle as <cycle>", function()
    local out, err, code = pipe("local t = {} t.self = t return t\n")
    assert.equal("", err)
    assert.equal(0, code)
    assert.equal("{ self = <cycle> }\n", out)
  end)

  it("prints a table shared twice (no cycle) in full both times", function()
    local out, _, code = pipe("local s = { 1 } return { a = s, b = s }\n")
    assert.equal(0, code)
    assert.equal("{ a = { 1 }, b = { 1 } }\n", out)
  end)

  it("limits the depth and the length of a table", function()
    local out, err, code = pipe(
      "local t = {} for i = 1, 1000 do t[i] = i end return t\n" ..
      "local t = {} local p = t for i = 1, 100 do p.n = {} p = p.n end " ..
      "return t\n")
    assert.equal("", err)
    assert.equal(0, code)
    local ls = lines(out)
    local long = table.concat(ls, "\n", 1, #ls - 1)
    assert.matches("^{%s*1,%s*2,%s*3,", long)
    assert.is_truthy(long:find("...", 1, true), "no mark of the cut")
    assert.is_falsy(long:find("1000", 1, true), "the list was not cut")
    local deep = ls[#ls]
    assert.matches("^{ n = { n = ", deep)
    assert.is_truthy(deep:find("...", 1, true), "no mark of the cut")
    assert.is_true(#deep < 200, "the nesting was not cut")
  end)

  it("prints sockets and tasks by their tostring", function()
    local out, err, code = pipe('s = sr.socket("inet", "stream")\n' ..
      "s\ntostring(s)\n{ s }\n" ..
      "t = sr.spawn(function() end)\nt\ntostring(t)\ns:close()\n")
    assert.equal("", err)
    assert.equal(0, code)
    local ls = lines(out)
    assert.equal(6, #ls, out) -- the last is what s:close() returned
    assert.equal(ls[2], ls[1])
    assert.matches("socket", ls[1])
    assert.equal("{ " .. ls[1] .. " }", ls[3])
    assert.equal(ls[5], ls[4])
    assert.matches("task", ls[4])
  end)

  it("runs each line in a task of its own", function()
    local out, err, code = pipe("t1 = sr.current()\n" ..
      "t1 ~= nil, t1 ~= sr.current(), t1:status()\n")
    assert.equal("", err)
    assert.equal(0, code)
    assert.equal("true\ttrue\tdone\n", out)
  end)

  it("runs a multi-line function", function()
    local out, err, code = pipe(
      "function f(x)\n  local y = x * 2\n  return y\nend\nf(21)\n")
    assert.equal("", err)
    assert.equal(0, code)
    assert.equal("42\n", out)
  end)

  it("completes each blocking statement before running the next line",
    function()
      local out, err, code = pipe(
        'srv = sr.listen("127.0.0.1", 0, function(c) ' ..
        'for l in c:lines() do sr.sleep(0.05) c:write("echo " .. l .. "\\n") ' ..
        'end end)\n' ..
        "c = sr.connect(srv:getsockname())\n" ..
        'sr.sleep(0.1) print("slept")\n' ..
        'c:write("one\\n") and c:read("l")\n' ..
        'print("between")\n' ..
        'c:write("two\\n") and c:read("l")\n' ..
        "c:close() srv:close()\n")
      assert.equal("", err)
      assert.equal(0, code)
      assert.equal("slept\necho one\nbetween\necho two\n", out)
    end)

  it("serves while later lines wait, and exits at EOF with a server open",
    function()
      local out, err, code = pipe(
        'srv = sr.listen("127.0.0.1", 0, function(c) c:write("hi\\n") end)\n' ..
        "sr.connect(srv:getsockname()):read(\"l\")\n")
      assert.equal("", err)
      assert.equal(0, code) -- not 124: EOF ended it though srv listens
      assert.equal("hi\n", out)
    end)

  it("prints a table's names starting with _ after the others", function()
    local out = pipe("{ _b = 1, a = 2, c = 3, _a = 4 }\n")
    assert.equal("{ a = 2, c = 3, _a = 4, _b = 1 }\n", out)
  end)

  it("prints an error and its traceback to stderr and goes on", function()
    local out, err, code = pipe('error("boom")\n1 + 1\nerror({})\n' ..
      "1 +* 2\n3\n")
    assert.equal(0, code)
    assert.equal("2\n3\n", out)
    assert.is_truthy(err:find("stdin:1: boom\nstack traceback:\n", 1, true),
      err)
    assert.is_truthy(err:find("(error object is a table value)", 1, true),
      err)
    assert.is_truthy(err:find("stdin:1: unexpected symbol near '1'", 1, true),
      err)
  end)

  it("shows an error object through its __tostring, as lua5.4 does", function()
    local _, err = pipe("error(setmetatable({}, { __tostring = " ..
      "function() return 'custom' end }))\n")
    assert.matches("^custom\nstack traceback:\n", err)
  end)

  it("prints the value of =expr, as lua5.1's REPL and Debian's lua5.4 do", function()
    local out, _, code = pipe("=1 + 1\n= 'a' .. 'b'\n")
    assert.equal(0, code)
    assert.equal("2\nab\n", out)
  end)

  it("reports a chunk left incomplete at end of input", function()
    local out, err, code = pipe("function f()\nreturn 1\n")
    assert.equal(0, code)
    assert.equal("", out)
    assert.matches("<eof>", err)
  end)

  it("exits with status 0 on empty input", function()
    local out, err, code = pipe("")
    assert.same({ "", "", 0 }, { out, err, code })
  end)

  it("leaves the pipe blocking for the reader after it (the shell's cat)",
    function()
      for _, ending in ipairs({ "os.exit(0)", "sr.stop()" }) do
        local out = sh(string.format(
          "{ printf '%%s\\n' %s; sleep 0.3; printf 'later\\n'; } | " ..
          "{ env SOCKRUN_HISTORY=%s timeout 10 %s; cat; } 2>&1",
          q(ending), q(tmp("history")), q(SOCKRUN)))
        assert.matches("later\n$", out)
      end
    end)

  it("runs -e code before reading lines with -e 'code' -i", function()
    local out, err, code = pipe("x\n", "-e " .. q("x = 42") .. " -i")
    assert.equal("", err)
    assert.equal(0, code)
    assert.equal("42\n", out)
  end)

  it("fails with status 1 when -e code raises before -i", function()
    local out, err, code = pipe("print('not reached')\n",
      "-e " .. q("error('early')") .. " -i")
    assert.equal(1, code)
    assert.equal("", out)
    assert.matches("early", err)
  end)

  it("requires a module into a global with -l mod -i and -l g=mod -i",
    function()
      local dir = tmp("mods")
      assert(os.execute("mkdir -p " .. q(dir)))
      defer(function() os.execute("rm -rf " .. q(dir)) end)
      spit(dir .. "/replmod.lua", "return { answer = 42 }\n")
      local out, err, code = pipe("replmod.answer\ng.answer\ng == replmod\n",
        "-l replmod -l g=replmod -i",
        { env = "LUA_PATH=" .. q(dir .. "/?.lua;;") })
      assert.equal("", err)
      assert.equal(0, code)
      assert.equal("42\n42\ntrue\n", out)
    end)

  it("keeps the sr.onerror hook the script set with -i script.lua", function()
    local path = tmp("hook.lua")
    spit(path, "sr = require 'sockrun'\n" ..
      "sr.onerror(function(e) io.stderr:write('MY HOOK: ', tostring(e), '\\n') end)\n")
    local _, err = pipe("sr.spawn(function() error('late') end)\n", "-i " .. q(path))
    assert.matches("MY HOOK: stdin:1: late", err, 1, true)
  end)

  it("runs the script first with -i script.lua", function()
    local script = tmp("script.lua")
    spit(script, "from_script = arg[1]\n")
    local out, err, code = pipe("from_script\n", "-i " .. q(script) .. " hey")
    assert.equal("", err)
    assert.equal(0, code)
    assert.equal("hey\n", out)
  end)
end)
