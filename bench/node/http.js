// W1/W2 for Node.js, on the `net` module: HTTP/1.1 "Hello, World!" with
// keep-alive. Each chunk is appended to the connection's buffer; every
// complete request head (up to the blank line) gets its answer, the answers
// to one chunk in one write; after a request that says "Connection: close"
// the answer is followed by end().
//   node bench/node/http.js PORT
'use strict';
const net = require('net');

const port = Number(process.argv[2]);
if (!Number.isInteger(port)) throw new Error('usage: http.js PORT');

const HEAD = 'HTTP/1.1 200 OK\r\nContent-Length: 13\r\nContent-Type: text/plain\r\n';
const KEEP = HEAD + '\r\nHello, World!';
const CLOSE = HEAD + 'Connection: close\r\n\r\nHello, World!';
const WANTS_CLOSE = /\r\nconnection:[ \t]*close/i;

const server = net.createServer((socket) => {
  socket.setNoDelay(true);
  let buf = '';
  socket.setEncoding('latin1');
  socket.on('data', (chunk) => {
    buf += chunk;
    let pos = 0;
    let out = '';
    for (;;) {
      const end = buf.indexOf('\r\n\r\n', pos);
      if (end < 0) break;
      const head = buf.slice(pos, end + 2);
      pos = end + 4;
      if (WANTS_CLOSE.test(head)) {
        socket.end(out + CLOSE, 'latin1');
        buf = '';
        return;
      }
      out += KEEP;
    }
    if (out !== '') socket.write(out, 'latin1');
    buf = buf.slice(pos);
  });
  socket.on('error', () => socket.destroy());
});

server.listen({ host: '127.0.0.1', port, backlog: 4096 }, () => {
  console.log(`node http listening on 127.0.0.1:${port}`);
});
