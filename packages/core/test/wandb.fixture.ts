import { createServer, type Server, type Socket } from 'node:net';
import { createServer as createHttpServer, type IncomingMessage } from 'node:http';

/** A loopback TCP server that accepts connections and never replies. */
export async function silentServer(): Promise<{ url: string; connections: () => number; close: () => Promise<void> }> {
  const sockets = new Set<Socket>();
  let count = 0;
  const server: Server = createServer((s) => {
    count++;
    sockets.add(s);
    s.on('error', () => undefined);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as { port: number }).port;
  return {
    url: `http://127.0.0.1:${port}`,
    connections: () => count,
    close: () =>
      new Promise<void>((r) => {
        for (const s of sockets) s.destroy();
        server.close(() => r());
      }),
  };
}

async function body(req: IncomingMessage): Promise<string> {
  let s = '';
  for await (const c of req) s += (c as Buffer).toString();
  return s;
}

/**
 * A stand-in for the W&B API, from what @wandb/sdk 0.5 sends: GraphQL Viewer and UpsertBucket,
 * then POSTs of {files: {"wandb-history.jsonl": {offset, content: [json lines]}}} to
 * /files/ENTITY/PROJECT/RUN/file_stream, and finally {complete: true}. `hangFiles` makes it
 * accept the file_stream requests and never answer them.
 */
export async function fakeWandb(opts: { hangFiles?: boolean } = {}) {
  const history: Record<string, unknown>[] = [];
  const requests: string[] = [];
  let completed = false;
  const server = createHttpServer((req, res) => {
    void body(req).then((b) => {
      requests.push(`${req.method} ${req.url}`);
      const json = (x: unknown) => {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify(x));
      };
      if (req.url === '/graphql') {
        const q = JSON.parse(b) as { query: string; variables: Record<string, unknown> };
        if (q.query.includes('query Viewer')) return json({ data: { viewer: { id: 'u1', entity: 'tester', flags: '', teams: { edges: [] } } } });
        if (q.query.includes('mutation UpsertBucket')) {
          const v = q.variables;
          return json({
            data: {
              upsertBucket: {
                bucket: {
                  id: 'b1', name: v['name'], displayName: 'fake-run', description: null, config: null, sweepName: null,
                  project: { id: 'p1', name: v['project'], entity: { id: 'e1', name: 'tester' } },
                },
                inserted: true,
              },
            },
          });
        }
        return json({ data: null });
      }
      if (req.url?.endsWith('/file_stream')) {
        if (opts.hangFiles) return; // never answer
        const d = JSON.parse(b) as { files?: Record<string, { content: string[] }>; complete?: boolean };
        for (const line of d.files?.['wandb-history.jsonl']?.content ?? []) history.push(JSON.parse(line) as Record<string, unknown>);
        if (d.complete) completed = true;
        return json({});
      }
      res.writeHead(404);
      res.end();
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as { port: number }).port;
  return {
    url: `http://127.0.0.1:${port}`,
    history,
    requests,
    completed: () => completed,
    close: () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}
