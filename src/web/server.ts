/**
 * The web handler on its own HTTP server, after any handlers mounted before it (the HTTP
 * pull endpoints), as `osfarm serve` runs it: for tests, benches and embedding.
 */
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';

import { type HttpHandler, listenHttp } from '../transfer/http/serve.js';
import { createWebHandler, type WebHandler, type WebOptions } from './index.js';

export interface ServerOptions extends WebOptions {
  /** Default 127.0.0.1. */
  host?: string;
  /** 0 (default) picks a free port. */
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
  const { server, address } = await listenHttp({ host: options.host ?? '127.0.0.1', port: options.port ?? 0, handlers: [...(options.before ?? []), web.handler] });
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
