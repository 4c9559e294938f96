/**
 * The web handler on its own HTTP server, after any handlers mounted before it (the HTTP
 * pull endpoints), as `osfarm serve` runs it: for tests, benches and embedding.
 */
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';

import { serve } from '../app/serve.js';
import type { HttpHandler } from '../transfer/http/serve.js';
import { createWebHandler, type WebHandler, type WebOptions } from './handler.js';

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
  const s = await serve({ host: options.host, port: options.port, handlers: [...(options.before ?? []), web.handler], onClose: () => web.close() });
  return { server: s.server, web, address: s.address, url: s.url, close: s.close };
}
