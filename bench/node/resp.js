// W4 for Node.js, on the `net` module: a RESP server for PING, SET and GET,
// inline and multibulk commands. Each chunk is appended to the connection's
// buffer; every complete command in it is executed, and the replies to one
// chunk go out in one write, so a pipelined batch (redis-benchmark -P 16)
// costs one read and one write.
//   node bench/node/resp.js PORT
'use strict';
const net = require('net');

const port = Number(process.argv[2]);
if (!Number.isInteger(port)) throw new Error('usage: resp.js PORT');

const store = new Map();
const CR = 13, LF = 10, STAR = 42, DOLLAR = 36;

// Parse one command at buf[pos..]: [argv, next] when complete, null when
// more bytes are needed, false on a protocol error.
function parse(buf, pos) {
  if (buf[pos] !== STAR) { // an inline command
    const nl = buf.indexOf(LF, pos);
    if (nl < 0) return null;
    const line = buf.toString('latin1', pos, nl).trim();
    return [line === '' ? [] : line.split(/\s+/), nl + 1];
  }
  let cr = buf.indexOf(CR, pos);
  if (cr < 0 || cr + 1 >= buf.length) return null;
  const n = parseInt(buf.toString('latin1', pos + 1, cr), 10);
  if (Number.isNaN(n)) return false;
  pos = cr + 2;
  const argv = new Array(n);
  for (let i = 0; i < n; i++) {
    if (pos >= buf.length) return null;
    if (buf[pos] !== DOLLAR) return false;
    cr = buf.indexOf(CR, pos);
    if (cr < 0 || cr + 1 >= buf.length) return null;
    const len = parseInt(buf.toString('latin1', pos + 1, cr), 10);
    if (Number.isNaN(len)) return false;
    const start = cr + 2;
    if (buf.length < start + len + 2) return null;
    argv[i] = buf.toString('latin1', start, start + len);
    pos = start + len + 2;
  }
  return [argv, pos];
}

function bulk(s) {
  return s === undefined ? '$-1\r\n' : '$' + Buffer.byteLength(s, 'latin1') + '\r\n' + s + '\r\n';
}

function execute(argv) {
  const cmd = (argv[0] || '').toUpperCase();
  if (cmd === 'PING') return argv.length > 1 ? bulk(argv[1]) : '+PONG\r\n';
  if (cmd === 'SET' && argv.length >= 3) {
    store.set(argv[1], argv[2]);
    return '+OK\r\n';
  }
  if (cmd === 'GET' && argv.length === 2) return bulk(store.get(argv[1]));
  return '-ERR unknown command\r\n';
}

const server = net.createServer((socket) => {
  socket.setNoDelay(true);
  let buf = null;
  socket.on('data', (chunk) => {
    buf = buf ? Buffer.concat([buf, chunk]) : chunk;
    let pos = 0;
    let out = '';
    while (pos < buf.length) {
      const r = parse(buf, pos);
      if (r === false) {
        socket.end(out + '-ERR protocol error\r\n', 'latin1');
        buf = null;
        return;
      }
      if (r === null) break;
      pos = r[1];
      if (r[0].length > 0) out += execute(r[0]);
    }
    if (out !== '') socket.write(out, 'latin1');
    buf = pos < buf.length ? buf.subarray(pos) : null;
  });
  socket.on('error', () => socket.destroy());
});

server.listen({ host: '127.0.0.1', port, backlog: 4096 }, () => {
  console.log(`node resp listening on 127.0.0.1:${port}`);
});
