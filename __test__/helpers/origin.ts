/** An HTTP origin for pull tests: `osfarm serve`'s pull handler over a repository, on loopback. */
import type { ExecutionContext } from 'ava';
import type { IncomingMessage } from 'node:http';

import { createPullHandler, type HttpHandler, listenHttp } from '../../src/transfer/http/serve.js';

export interface Origin {
  url: string;
  port: number;
  /** The image byte ranges asked for, in order. */
  ranges: string[];
  /** Stops listening and drops every connection (a new `serveRepo` on `port` brings it back). */
  stop: () => Promise<void>;
}

/**
 * Serves `repo` on 127.0.0.1 (`port`, default a free one) until the test ends. `delayMs`,
 * read at each request, holds every image range back that long: a slow origin. `before`
 * sees each request first and may answer it itself (a lying origin).
 */
export async function serveRepo(t: ExecutionContext, repo: string, opts: { port?: number; delayMs?: () => number; before?: HttpHandler } = {}): Promise<Origin> {
  const ranges: string[] = [];
  const record = async (req: IncomingMessage) => {
    if (req.url?.endsWith('/image') && req.headers.range) {
      ranges.push(req.headers.range);
      const ms = opts.delayMs?.() ?? 0;
      if (ms > 0) await new Promise((r) => setTimeout(r, ms));
    }
    return false;
  };
  const { server, address } = await listenHttp({ host: '127.0.0.1', port: opts.port ?? 0, handlers: [record, ...(opts.before ? [opts.before] : []), createPullHandler({ repo })] });
  let stopped: Promise<void> | undefined;
  const stop = () => (stopped ??= new Promise<void>((r) => (server.closeAllConnections(), server.close(() => r()))));
  t.teardown(stop);
  return { url: `http://127.0.0.1:${address.port}`, port: address.port, ranges, stop };
}
