/**
 * Serving on one HTTP port, as `osfarm serve` and the web front end do: handlers tried in
 * order, the URL to give people, and a close that ends the handlers' work and every open
 * connection.
 */
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';

import { type HttpHandler, listenHttp } from '../transfer/http/serve.js';
import type { TlsServerOptions } from '../trust/tls.js';

export interface ServeHandlersOptions {
  /** Default 127.0.0.1. */
  host?: string;
  /** 0 (default) picks a free port. */
  port?: number;
  /** Tried in order; the first that answers wins. */
  handlers: HttpHandler[];
  /** Runs first on close (a web handler cancels its jobs). */
  onClose?: () => Promise<void>;
  /** HTTPS with this certificate chain and key (PEM). */
  tls?: TlsServerOptions;
}

/** A listening server: close it (or `await using` it) to stop. */
export interface Serving extends AsyncDisposable {
  server: Server;
  address: AddressInfo;
  /** `http://host:port` or `https://…` (IPv6 addresses in brackets). */
  url: string;
  /** Ends the handlers' work and every connection, then stops listening. Safe to call twice. */
  close(): Promise<void>;
}

export async function serveHandlers(options: ServeHandlersOptions): Promise<Serving> {
  const { server, address } = await listenHttp({ host: options.host ?? '127.0.0.1', port: options.port ?? 0, handlers: options.handlers, tls: options.tls });
  const host = address.family === 'IPv6' ? `[${address.address}]` : address.address;
  let closing: Promise<void> | undefined;
  const close = () =>
    (closing ??= (async () => {
      await options.onClose?.();
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    })());
  return { server, address, url: `${options.tls ? 'https' : 'http'}://${host}:${address.port}`, close, [Symbol.asyncDispose]: close };
}
