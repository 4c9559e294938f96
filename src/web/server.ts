/**
 * An HTTP server for the web handler and any handlers mounted before it (the HTTP pull
 * endpoints): each handler answers or passes; what none answers is a 404.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

import { sendJson } from './http.js';
import { createWebHandler, type WebHandler, type WebOptions } from './index.js';

export type HttpHandler = (req: IncomingMessage, res: ServerResponse) => Promise<boolean>;

export interface ServerOptions extends WebOptions {
  host?: string;
  /** 0 picks a free port. */
  port?: number;
  /** Handlers asked before the web's (e.g. `createPullHandler({ repoPath })`). */
  before?: HttpHandler[];
}

export interface StartedServer {
  server: Server;
  web: WebHandler;
  address: AddressInfo;
  url: string;
  close(): Promise<void>;
}

export async function startServer(options: ServerOptions): Promise<StartedServer> {
  const web = await createWebHandler(options);
  const chain = [...(options.before ?? []), web.handler];
  const server = createServer((req, res) => {
    void (async () => {
      for (const h of chain) if (await h(req, res)) return;
      sendJson(res, 404, { error: { code: 'OSFARM_NOT_FOUND', message: `nothing at ${req.url}: the GUI is at /, the API at /api/docs` } });
    })().catch((err: unknown) => {
      if (!res.headersSent) sendJson(res, 500, { error: { code: 'OSFARM_INTERNAL', message: (err as Error).message } });
      else res.destroy();
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port ?? 0, options.host ?? '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });
  const address = server.address() as AddressInfo;
  const host = address.family === 'IPv6' ? `[${address.address}]` : address.address;
  return {
    server,
    web,
    address,
    url: `http://${host}:${address.port}`,
    async close() {
      await web.close();
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}
