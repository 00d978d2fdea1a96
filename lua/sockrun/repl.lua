--- sockrun.repl: the interactive prompt of the `sockrun` binary.
-- The loop keeps running while the prompt waits: standard input is a stream
-- read by the main task, each typed command runs in a task of its own, and
-- servers started at the prompt keep serving. On a terminal it has its own
-- small line editor (raw mode: history, completion, Ctrl-C cancels the
-- running command); on a pipe it reads and runs lines in order.
-- @module sockrun.repl

local sr = require "sockrun"
local core = sr._core

local io, string, table, math = io, string, table, math
local type, tostring, pairs, ipairs, select, pcall, xpcall, load, getmetatable =
    type, tostring, pairs, ipairs, select, pcall, xpcall, load, getmetatable
local traceback = debug.traceback

local M = {}

-- Pretty printing --------------------------------------------------------

local MAX_DEPTH, MAX_ITEMS, WIDTH = 4, 40, 72

local keywords = {}
for w in ([[and break do else elseif end false for function goto if in
  local nil not or repeat return then true until while]]):gmatch("%a+") do
  keywords[w] = true
end

local function quote(s)
  return (string.format("%q", s):gsub("\\\n", "\\n"):gsub("\r", "\\r"))
end

-- Sort keys by type (numbers, strings, others), then by value; names
-- that start with "_" (private by convention) after the others, so that a
-- table cut at MAX_ITEMS shows its public part.
local type_rank = { number = 1, string = 2 }
local function key_less(a, b)
  local ta, tb = type_rank[type(a)] or 3, type_rank[type(b)] or 3
  if ta ~= tb then return ta < tb end
  if ta == 2 then
    local pa, pb = a:sub(1, 1) == "_", b:sub(1, 1) == "_"
    if pa ~= pb then return pb end
  end
  if ta < 3 then return a < b end
  return tostring(a) < tostring(b)
end

local repr

local function repr_table(t, depth, seen, indent)
  if seen[t] then return "<cycle>" end
  if depth >= MAX_DEPTH then return "{...}" end
  seen[t] = true
  local items, n = {}, #t
  for i = 1, math.min(n, MAX_ITEMS) do
    items[#items + 1] = repr(t[i], depth + 1, seen, indent .. "  ")
  end
  local keys = {}
  for k in pairs(t) do
    if not (math.type(k) == "integer" and k >= 1 and k <= n) then
      keys[#keys + 1] = k
    end
  end
  table.sort(keys, key_less)
  for i = 1, #keys do
    if #items >= MAX_ITEMS then break end
    local k = keys[i]
    local ks = type(k) == "string" and k:match("^[%a_][%w_]*$")
        and not keywords[k] and k or "[" .. repr(k, MAX_DEPTH, seen, "") .. "]"
    items[#items + 1] = ks .. " = " .. repr(t[k], depth + 1, seen,
      indent .. "  ")
  end
  local total = math.min(n, MAX_ITEMS) + #keys
  local more = n + #keys - math.min(total, MAX_ITEMS)
  if more > 0 then items[#items + 1] = "... (" .. more .. " more)" end
  seen[t] = nil -- a table shared without a cycle prints in full each time
  if #items == 0 then return "{}" end
  local one = "{ " .. table.concat(items, ", ") .. " }"
  if #one + #indent <= WIDTH and not one:find("\n") then return one end
  return "{\n" .. indent .. "  " .. table.concat(items, ",\n" .. indent .. "  ")
      .. "\n" .. indent .. "}"
end

function repr(v, depth, seen, indent)
  local tv = type(v)
  if tv == "string" then return quote(v) end
  if tv == "table" then
    local mt = getmetatable(v)
    if type(mt) == "table" and mt.__tostring then return tostring(v) end
    return repr_table(v, depth, seen, indent)
  end
  return tostring(v)
end

--- One value as the prompt shows it: strings bare at the top level (as
-- lua5.4 prints them), tables nested and sorted, cycles marked.
function M.repr(v)
  if type(v) == "string" then return v end
  return repr(v, 0, {}, "")
end

local function results_line(r)
  local parts = {}
  for i = 1, r.n do parts[i] = M.repr(r[i]) end
  return table.concat(parts, "\t")
end

-- Compiling typed code -------------------------------------------------------

-- An expression prints its values: try "return <line>" first, as lua5.4.
local function compile(src)
  -- "=expr" prints expr, as lua5.1's REPL (and Debian's lua5.4) take it
  if src:sub(1, 1) == "=" then src = src:sub(2) end
  local fn = load("return " .. src, "=stdin", "t")
  if fn then return fn end
  return load(src, "=stdin", "t")
end

local function incomplete(err)
  return err ~= nil and err:find("<eof>$") ~= nil
end

local function error_text(err)
  if type(err) == "string" then return err end
  local mt = getmetatable(err) -- as lua5.4 reports one
  if type(mt) == "table" and mt.__tostring then
    local ok, text = pcall(tostring, err)
    if ok and type(text) == "string" then return text end
  end
  return "(error object is a " .. type(err) .. " value)"
end

-- Runs a compiled command inside the current task; reports the results or
-- the error with its traceback through out(text, is_error).
-- ran(), when given, is called as soon as the command has returned or
-- failed, before its results print.
local function execute(fn, out, ran)
  local r = table.pack(xpcall(fn, function(e)
    -- the frames below the typed chunk are the REPL's own: cut them
    return (traceback(error_text(e), 2):gsub("\n\t%[C%]: in function 'xpcall'.*$", ""))
  end))
  if ran then ran() end
  if not r[1] then
    out(r[2] .. "\n", true)
  elseif r.n > 1 then
    -- a result's __tostring or __name may raise: report it as an error
    local ok, line = pcall(results_line,
      table.pack(select(2, table.unpack(r, 1, r.n))))
    if ok then
      out(line .. "\n")
    else
      out("error printing the results: " .. error_text(line) .. "\n", true)
    end
  end
end

-- History ------------------------------------------------------------------

local HISTORY_MAX = 1000

local function history_path()
  local p = os.getenv("SOCKRUN_HISTORY")
  if p and p ~= "" then return p end
  local home = os.getenv("HOME")
  return home and home .. "/.sockrun_history" or nil
end

-- The last HISTORY_MAX lines; a file that grew past twice that is cut
-- back to them. A new file is made readable by its owner only.
local function history_load(path)
  local h = {}
  local f = path and io.open(path, "r")
  if not f then
    if path then core.create_private(path) end
    return h
  end
  for line in f:lines() do h[#h + 1] = line end
  f:close()
  local all = #h
  if all > HISTORY_MAX then h = table.move(h, all - HISTORY_MAX + 1, all, 1, {}) end
  if all > 2 * HISTORY_MAX then
    f = io.open(path, "w")
    if f then
      f:write(table.concat(h, "\n"), "\n")
      f:close()
    end
  end
  return h
end

local function history_add(h, path, line)
  if line:match("^%s*$") or h[#h] == line then return end
  h[#h + 1] = line
  local f = path and io.open(path, "a")
  if f then
    f:write(line, "\n")
    f:close()
  end
end

-- Completion ---------------------------------------------------------------

-- The value a dotted path names ("sr", "c", "string"), read with plain
-- indexing under pcall: completion never calls anything else.
local function lookup(path)
  local v = _G
  for name in path:gmatch("[^%.:]+") do
    local ok, nv = pcall(function() return v[name] end)
    if not ok or nv == nil then return nil end
    v = nv
  end
  return v
end

-- Names reachable with "." or ":" from v: its fields, and those its
-- metatable's __index table offers (methods of sockets, strings...).
-- Methods a stream socket has but cannot use: not offered for completion.
local dgram_only = { sendto = true, recvfrom = true }

local function names_of(v, methods_only)
  local out, seen = {}, {}
  local mt0 = getmetatable(v)
  if type(mt0) == "table" and rawget(mt0, "__name") == "sockrun.socket" then
    local ok, _, kind = pcall(v.family, v)
    if ok and kind == "stream" then
      for k in pairs(dgram_only) do seen[k] = true end
    end
  end
  local function add(t)
    for k, val in pairs(t) do
      if type(k) == "string" and not seen[k]
          and (not methods_only or type(val) == "function") then
        seen[k] = true
        out[#out + 1] = k
      end
    end
  end
  local depth = 0
  while v ~= nil and depth < 8 do
    if type(v) == "table" then add(v) end
    local mt = getmetatable(v)
    local idx = type(mt) == "table" and rawget(mt, "__index") or nil
    if type(idx) ~= "table" then break end
    v, depth = idx, depth + 1
  end
  return out
end

--- Candidates for the word before the cursor: returns the partial name and
-- the sorted list of names that complete it.
function M.complete(before)
  local word = before:match("[%w_%.:]*$")
  local path, sep, partial = word:match("^(.-)([%.:]?)([%w_]*)$")
  local pool
  if sep == "" then
    pool = names_of(_G)
    for k in pairs(keywords) do pool[#pool + 1] = k end
  elseif path == "" then -- after an expression, ("abc"):, whose value is unknown
    return partial, {}
  else
    local v = lookup(path)
    if v == nil then return partial, {} end
    pool = names_of(v, sep == ":")
  end
  local cands, seen = {}, {}
  local private = partial:sub(1, 1) == "_" -- else "_" names are not offered
  for _, name in pairs(pool) do
    if name:sub(1, #partial) == partial and not seen[name] and
        (private or name:sub(1, 1) ~= "_") then
      seen[name] = true
      cands[#cands + 1] = name
    end
  end
  table.sort(cands)
  return partial, cands
end

local function common_prefix(list)
  local p = list[1] or ""
  for i = 2, #list do
    while list[i]:sub(1, #p) ~= p do p = p:sub(1, -2) end
  end
  return p
end

-- Output that does not garble the line being typed ----------------------------

local stdout, stderr = io.stdout, io.stderr
local FILE_index = getmetatable(stdout).__index
local raw_write = FILE_index.write

-- The editor on a terminal; nil on a pipe.
local editor

-- Whether what a command wrote to the terminal ended mid-line (io.write
-- with no newline): the prompt then starts on a line of its own, as the
-- redraw would otherwise clear that output.
local mid_line = false

-- Write to stdout or stderr around the prompt: clear the line, write, end
-- with a newline, redraw prompt and input.
local function guarded_write(f, ...)
  if editor and not editor.shown and (f == stdout or f == stderr) then
    for i = select("#", ...), 1, -1 do
      local v = select(i, ...)
      v = type(v) == "number" and tostring(v) or v
      if type(v) == "string" and v ~= "" then
        mid_line = v:sub(-1) ~= "\n"
        break
      end
    end
    return raw_write(f, ...)
  end
  if editor and editor.shown and (f == stdout or f == stderr) then
    raw_write(stdout, editor:home())
    stdout:flush()
    local r = table.pack(raw_write(f, ...))
    local n = select("#", ...)
    local last = n > 0 and select(n, ...) or nil
    if type(last) == "number" then last = tostring(last) end
    if type(last) == "string" and last:sub(-1) ~= "\n" then
      raw_write(f, "\n")
    end
    f:flush()
    editor:draw()
    return table.unpack(r, 1, r.n)
  end
  return raw_write(f, ...)
end

local function guarded_print(...)
  local n = select("#", ...)
  local parts = {}
  for i = 1, n do parts[i] = tostring((select(i, ...))) end
  stdout:write(table.concat(parts, "\t"), "\n")
end

-- warn(): the binary's warning function prints it (and keeps @on/@off),
-- around the prompt. (Warnings Lua itself emits, an error in a __gc,
-- still go straight out.)
local function guarded_warn(original)
  return function(...)
    if not (editor and editor.shown) then return original(...) end
    raw_write(stdout, editor:home())
    stdout:flush()
    local ok, err = pcall(original, ...)
    editor:draw()
    if not ok then error(err, 2) end
  end
end

local function install_output_guards()
  local saved = { FILE_index.write, _G.print, io.write, _G.warn }
  FILE_index.write = guarded_write
  _G.print = guarded_print
  io.write = function(...) return io.output():write(...) end
  if sr._binary then _G.warn = guarded_warn(saved[4]) end
  return function()
    FILE_index.write, _G.print, io.write, _G.warn =
        saved[1], saved[2], saved[3], saved[4]
  end
end

-- The line editor -------------------------------------------------------------

local Editor = {}
Editor.__index = Editor

local function utf8_prev(s, pos) -- byte index of the char ending at pos
  local i = pos
  while i > 1 and s:byte(i) and s:byte(i) >= 0x80 and s:byte(i) < 0xC0 do
    i = i - 1
  end
  return i - 1
end

local function utf8_next(s, pos) -- position after the char starting at pos+1
  local i = pos + 1
  repeat i = i + 1 until i > #s or s:byte(i) < 0x80 or s:byte(i) >= 0xC0
  return i - 1
end

-- Columns a string takes on the terminal: East Asian wide characters and
-- most emoji take two, combining marks and joiners none (a small table of
-- ranges, as wcwidth has them for the common scripts).
local WIDE = { 0x1100, 0x115F, 0x2E80, 0x303E, 0x3041, 0x33FF, 0x3400, 0x4DBF,
  0x4E00, 0x9FFF, 0xA000, 0xA4CF, 0xAC00, 0xD7A3, 0xF900, 0xFAFF,
  0xFE30, 0xFE4F, 0xFF00, 0xFF60, 0xFFE0, 0xFFE6, 0x1F300, 0x1F64F,
  0x1F900, 0x1F9FF, 0x20000, 0x2FFFD, 0x30000, 0x3FFFD }
local ZERO = { 0x0300, 0x036F, 0x1AB0, 0x1AFF, 0x1DC0, 0x1DFF, 0x200B, 0x200F,
  0x20D0, 0x20FF, 0xFE00, 0xFE0F, 0xFE20, 0xFE2F }

local function in_ranges(ranges, c)
  for i = 1, #ranges, 2 do
    if c < ranges[i] then return false end
    if c <= ranges[i + 1] then return true end
  end
  return false
end

local function width(s)
  if not s:find("[\x80-\xFF]") then return #s end
  if not utf8.len(s) then return #s end -- not UTF-8: a column a byte
  local w = 0
  for _, c in utf8.codes(s) do
    if in_ranges(ZERO, c) then
    elseif in_ranges(WIDE, c) then w = w + 2
    else w = w + 1 end
  end
  return w
end

-- The text as the editor shows it: a Tab as spaces up to the next multiple
-- of 8 columns from the start of the render, so that the terminal, which
-- never sees the Tab, and the cursor arithmetic agree.
local function expand_tabs(s)
  if not s:find("\t", 1, true) then return s end
  local out, col = {}, 0
  for piece, tab in s:gmatch("([^\t]*)(\t?)") do
    out[#out + 1] = piece
    col = col + width(piece)
    if tab ~= "" then
      local n = 8 - col % 8
      out[#out + 1] = string.rep(" ", n)
      col = col + n
    end
  end
  return table.concat(out)
end

function Editor:columns()
  local cols = self.input and select(1, core.winsize(self.input)) or 80
  if not cols or cols < 1 then cols = 80 end
  return cols
end

-- Redraw prompt and input, wrapped at the terminal's width: go back to the
-- first row of the last render, clear to the end of the screen, write,
-- then put the cursor in place. ccur is the cursor's column counted from
-- the start of the render, so its row is ccur // width, also after the
-- terminal was resized and rewrapped the render (as terminals do now).
function Editor:draw()
  local cols = self:columns()
  local text = expand_tabs(self.prompt .. self.buf)
  local total = width(text)
  local cur = width(expand_tabs(self.prompt .. self.buf:sub(1, self.pos)))
  local out = { (not self.shown and mid_line) and "\r\n" or "", self:home(),
    text }
  mid_line = false
  -- at an exact multiple of the width the terminal holds the cursor at the
  -- last column; a newline makes its position certain
  self.at_new_row = total > 0 and total % cols == 0
  if self.at_new_row then out[#out + 1] = "\n" end
  local endrow, crow, ccol = total // cols, cur // cols, cur % cols
  if endrow > crow then out[#out + 1] = "\27[" .. (endrow - crow) .. "A" end
  out[#out + 1] = "\r"
  if ccol > 0 then out[#out + 1] = "\27[" .. ccol .. "C" end
  raw_write(stdout, table.concat(out))
  stdout:flush()
  self.ccur = cur
  self.shown = true
end

-- Escape codes that move to the first row of the render and clear it all.
function Editor:home()
  local up = (self.ccur or 0) // self:columns()
  self.ccur = 0
  return (up > 0 and ("\27[" .. up .. "A") or "") .. "\r\27[J"
end

-- Leave the render: cursor after the input, on a fresh line.
function Editor:finish_line(suffix)
  self.pos = #self.buf
  self:draw()
  -- a render as wide as the terminal left the cursor on a fresh row already
  raw_write(stdout, suffix or "",
    (self.at_new_row and not suffix) and "\r" or "\r\n")
  stdout:flush()
  self.ccur = 0
  self.shown = false
end

function Editor:insert(s)
  self.buf = self.buf:sub(1, self.pos) .. s .. self.buf:sub(self.pos + 1)
  self.pos = self.pos + #s
end

function Editor:complete()
  -- a table's __index or __pairs may raise: then there is nothing to offer
  local ok, partial, cands = pcall(M.complete, self.buf:sub(1, self.pos))
  if not ok or #cands == 0 then
    raw_write(stdout, "\a")
    return
  end
  local prefix = common_prefix(cands)
  if #prefix > #partial then
    self:insert(prefix:sub(#partial + 1))
  elseif #cands > 1 then
    local buf, pos = self.buf, self.pos
    self:finish_line()
    raw_write(stdout, table.concat(cands, "  "), "\r\n")
    self.buf, self.pos = buf, pos
  end
end

function Editor:history_move(delta)
  local h = self.history
  local i = self.hpos + delta
  if i < 1 or i > #h + 1 then return end
  if self.hpos == #h + 1 then self.saved = self.buf end
  self.hpos = i
  self.buf = i == #h + 1 and (self.saved or "") or h[i]
  self.pos = #self.buf
end

-- Byte positions of the start of the word before pos, and of the end of
-- the word after it (words: runs of letters, digits and _).
local function word_left(s, pos)
  local head = s:sub(1, pos):gsub("[%w_]*[^%w_]*$", "")
  return #head
end

local function word_right(s, pos)
  local _, e = s:find("^[^%w_]*[%w_]*", pos + 1)
  return e or pos
end

-- Apply one key (a character, an escape sequence, or pasted text) while
-- idle.
function Editor:key(k)
  if type(k) == "table" then -- pasted text
    self:insert(k.paste)
  elseif k == "\r" or k == "\n" then
    local line = self.buf
    self:finish_line()
    self.buf, self.pos = "", 0
    self.hpos = #self.history + 1
    history_add(self.history, self.history_file, line)
    self.hpos = #self.history + 1
    self.on_line(line)
    return
  elseif k == "\t" then
    self:complete()
  elseif k == "\127" or k == "\8" then -- backspace
    if self.pos > 0 then
      local p = utf8_prev(self.buf, self.pos)
      self.buf = self.buf:sub(1, p) .. self.buf:sub(self.pos + 1)
      self.pos = p
    end
  elseif k == "\27[3~" or (k == "\4" and #self.buf > 0) then -- delete
    if self.pos < #self.buf then
      local q = utf8_next(self.buf, self.pos)
      self.buf = self.buf:sub(1, self.pos) .. self.buf:sub(q + 1)
    end
  elseif k == "\4" then -- Ctrl-D on an empty line
    self:finish_line()
    self.on_eof()
    return
  elseif k == "\3" then -- Ctrl-C at the prompt: drop the line
    self:finish_line("^C")
    self.buf, self.pos = "", 0
    self.on_cancel_input()
  elseif k == "\27[D" or k == "\2" then
    if self.pos > 0 then self.pos = utf8_prev(self.buf, self.pos) end
  elseif k == "\27[C" or k == "\6" then
    if self.pos < #self.buf then self.pos = utf8_next(self.buf, self.pos) end
  elseif k == "\27[H" or k == "\27OH" or k == "\27[1~" or k == "\1" then
    self.pos = 0
  elseif k == "\27[F" or k == "\27OF" or k == "\27[4~" or k == "\5" then
    self.pos = #self.buf
  elseif k == "\27[A" or k == "\16" then
    self:history_move(-1)
  elseif k == "\27[B" or k == "\14" then
    self:history_move(1)
  elseif k == "\11" then -- Ctrl-K
    self.buf = self.buf:sub(1, self.pos)
  elseif k == "\21" then -- Ctrl-U
    self.buf, self.pos = self.buf:sub(self.pos + 1), 0
  elseif k == "\23" then -- Ctrl-W: the word (and blanks) before the cursor
    local head = self.buf:sub(1, self.pos):gsub("[^%s]*%s*$", "")
    self.buf = head .. self.buf:sub(self.pos + 1)
    self.pos = #head
  elseif k == "\27b" or k == "\27[1;5D" or k == "\27[1;3D" then -- Alt-b
    self.pos = word_left(self.buf, self.pos)
  elseif k == "\27f" or k == "\27[1;5C" or k == "\27[1;3C" then -- Alt-f
    self.pos = word_right(self.buf, self.pos)
  elseif k == "\27d" then -- Alt-d: the word after the cursor
    self.buf = self.buf:sub(1, self.pos) ..
        self.buf:sub(word_right(self.buf, self.pos) + 1)
  elseif k == "\12" then -- Ctrl-L
    raw_write(stdout, "\27[H\27[2J")
  elseif #k >= 1 and k:byte(1) >= 32 and k:byte(1) ~= 127 then
    self:insert(k)
  end
  self:draw()
end

-- Bracketed paste (the terminal marks pasted text, see run_tty): the text
-- goes in as it is, Tabs included, in one insertion a line; each line end
-- is an Enter, as typed.
local PASTE_START, PASTE_END = "\27[200~", "\27[201~"

local function paste_keys(keys, text)
  text = text:gsub("\r\n", "\n"):gsub("\r", "\n")
  -- other control characters (an Escape would steer the terminal): out
  text = text:gsub("[%z\1-\8\11-\31\127]", "")
  local from = 1
  while from <= #text do
    local nl = text:find("\n", from, true)
    local line = text:sub(from, (nl or #text + 1) - 1)
    if line ~= "" then keys[#keys + 1] = { paste = line } end
    if not nl then break end
    keys[#keys + 1] = "\r"
    from = nl + 1
  end
end

-- A key as the bytes that make it (to queue it again).
local function key_bytes(k)
  return type(k) == "table" and PASTE_START .. k.paste .. PASTE_END or k
end

-- Split input into keys: escape sequences whole, UTF-8 characters whole,
-- a paste as its lines. Returns the keys and what is left of an incomplete
-- sequence.
local function split_keys(data)
  local keys, i = {}, 1
  while i <= #data do
    local c = data:byte(i)
    local k
    if c == 27 and data:sub(i, i + #PASTE_START - 1) == PASTE_START then
      local e = data:find(PASTE_END, i + #PASTE_START, true)
      if not e then break end -- wait for the rest of the paste
      paste_keys(keys, data:sub(i + #PASTE_START, e - 1))
      i = e + #PASTE_END
      goto continue
    elseif c == 27 then
      k = data:match("^\27%[[%d;]*[%a~]", i) or data:match("^\27O%a", i) or
          data:match("^\27[%a]", i) -- Alt-letter
      if not k then
        if data:match("^\27%[?[%d;]*$", i) then break end -- wait for more
        k = "\27" -- a lone Escape: ignored by Editor:key
      end
    elseif c >= 0xC0 then
      -- a byte no UTF-8 character starts with (0xF8-0xFF) is a key alone
      k = data:match("^[\xC0-\xF7][\x80-\xBF]*", i) or data:sub(i, i)
    else
      k = data:sub(i, i)
    end
    keys[#keys + 1] = k
    i = i + #k
    ::continue::
  end
  return keys, data:sub(i)
end

-- The REPL on a terminal -------------------------------------------------------

local function banner()
  raw_write(stdout, string.format(
    "sockrun %s (%s) -- `sr` is the module. Ctrl-C cancels a running " ..
    "command, Ctrl-D exits.\n", sr.version, _VERSION))
  stdout:flush()
end

local function run_tty(input)
  local history_file = history_path()
  local ed = setmetatable({
    buf = "", pos = 0, prompt = "> ", shown = false, input = input,
    history = history_load(history_file), history_file = history_file,
  }, Editor)
  ed.hpos = #ed.history + 1
  editor = ed

  local pending_chunk -- lines of an incomplete chunk so far
  local command       -- the task of the running command, if any
  local queued = ""   -- keys typed while a command runs
  local quit = false
  local feed, cancel_command

  local function out(text, is_err)
    (is_err and stderr or stdout):write(text)
  end

  local function idle()
    command = nil
    core.interruptible(nil)
    core.ttymode(input, "raw")
    ed.prompt = pending_chunk and ">> " or "> "
    ed:draw()
    if queued ~= "" then
      local q = queued
      queued = ""
      feed(q)
    end
  end

  -- Ctrl-C while a command waits: cancel it (its <close>s run)
  cancel_command = function()
    local c = command
    if not c then return end
    command = nil
    core.interruptible(nil)
    pcall(c.cancel, c) -- (a command that runs cannot be: it ends itself)
    raw_write(stdout, "^C (cancelled)\r\n")
    queued = "" -- what was typed ahead goes, as a terminal's interrupt flushes it
    idle()
  end

  local reader = sr.current() -- the task that reads the keys (below)
  ed.on_eof = function()
    quit = true
    -- Ctrl-D typed ahead is replayed in the task of the command it waited
    -- for, while the reader waits for more keys: wake it, input closed
    if sr.current() ~= reader then
      core.ttymode(input, "normal")
      input:close()
    end
  end
  ed.on_cancel_input = function()
    pending_chunk = nil
    ed.prompt = "> "
  end
  ed.on_line = function(line)
    local chunk = pending_chunk and pending_chunk .. "\n" .. line or line
    local fn, err = compile(chunk)
    if not fn and incomplete(err) then
      pending_chunk = chunk
      ed.prompt = ">> "
      ed:draw()
      return
    end
    pending_chunk = nil
    if not fn then
      out(err .. "\n", true)
      idle()
      return
    end
    command = sr.spawn(function()
      -- Ctrl-C now raises SIGINT: it interrupts a command that computes
      -- and never yields, and cancels one that waits
      core.ttymode(input, "command")
      core.interruptible(cancel_command)
      -- printing its results is the REPL's, not to be interrupted
      pcall(execute, fn, out, function() core.interruptible(nil) end)
      idle()
    end)
    if command:status() ~= "waiting" then command = nil end
  end

  feed = function(data)
    local keys, rest = split_keys(data)
    local i = 0
    while i < #keys do
      i = i + 1
      local k = keys[i]
      if quit then return end
      if command then
        -- a Ctrl-C that came in the same read as the command's Enter,
        -- before its terminal mode made it a signal: it cancels, and what
        -- was typed ahead of it goes, as a terminal's interrupt flushes it
        local j = i
        while j <= #keys and keys[j] ~= "\3" do j = j + 1 end
        if j <= #keys then
          cancel_command()
          i = j
        else
          for m = i, #keys do queued = queued .. key_bytes(keys[m]) end
          queued = queued .. rest
          return
        end
      else
        -- nothing typed may stop the REPL, and with it every server
        local ok, err = pcall(ed.key, ed, k)
        if not ok then
          out("sockrun: REPL error: " .. error_text(err) .. "\n", true)
          ed:draw()
        end
      end
    end
    if command then queued = queued .. rest else ed.partial = rest end
  end

  core.ttymode(input, "raw")
  banner()
  ed:draw()
  while not quit do
    local data = input:read()
    if not data then break end
    feed((ed.partial or "") .. data)
  end
  -- input closed under the prompt (sr.stop(), a signal): leave its line
  if not quit then raw_write(stdout, "\r\n") end
  editor = nil
  core.ttymode(input, "normal")
end

-- The REPL on a pipe (or a file): lines in order, no editor ------------------

local function run_pipe(input)
  local pending_chunk
  local function out(text, is_err) (is_err and stderr or stdout):write(text) end
  while true do
    local line
    if input then line = input:read("l") else line = io.read("l") end
    if not line then break end
    local chunk = pending_chunk and pending_chunk .. "\n" .. line or line
    local fn, err = compile(chunk)
    if not fn and incomplete(err) then
      pending_chunk = chunk
    else
      pending_chunk = nil
      if not fn then
        out(err .. "\n", true)
      else
        -- each statement completes before the next line runs
        sr.spawn(execute, fn, out):join()
      end
      stdout:flush()
    end
  end
  if pending_chunk then
    local _, err = compile(pending_chunk)
    out((err or "incomplete chunk") .. "\n", true)
  end
end

--- Run the REPL until end of input (Ctrl-D on a terminal), then stop the
-- loop so the binary exits, closing every socket. Call it from a task (the
-- binary runs it in the main task).
function M.run()
  _G.sr = sr
  local input = core.stdin()
  local restore = install_output_guards()
  -- errors that end tasks are printed around the prompt; a hook the
  -- script set (sockrun -i script.lua) stays in charge
  local _, previous_onerror = sr.onerror(function(err, tb)
    stderr:write(tb or error_text(err), "\n")
  end)
  if previous_onerror then sr.onerror(previous_onerror) end
  local ok, err = pcall(function()
    if input and core.isatty(0) then
      run_tty(input)
    else
      run_pipe(input)
    end
  end)
  sr.onerror(previous_onerror)
  restore()
  if input then input:close() end
  stdout:flush()
  -- the binary's stop lets connection handlers finish: say why it waits
  local running = #core.handlers()
  if running > 0 and sr._binary and core.isatty(2) then
    stderr:write(string.format("sockrun: waiting up to %g s for %d " ..
      "connection handler%s to end (Ctrl-C ends them now)\n", sr.grace,
      running, running == 1 and "" or "s"))
  end
  sr.stop()
  if not ok then error(err, 0) end
end

return M
