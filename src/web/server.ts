/**
 * What `osfarm serve` serves, for services and embedding: the repository's pull endpoints
 * (`/images/…`) and the web GUI and REST API (`/`, `/assets/…`, `/api/…`), as one handler to
 * mount in a server of one's own (`createHandler`) or on a port of its own (`serve`).
 */
import type { IncomingMessage, ServerResponse } from 'node:http';

import { defaultTokenFile } from '../base/env.js';
import { serveHandlers, type Serving } from '../app/serve.js';
import { createPullHandler, type HttpHandler, type PullHandler } from '../transfer/http/serve.js';
import { createWebHandler, type WebHandler, type WebOptions } from './handler.js';
import type { TlsServerOptions } from '../trust/tls.js';

export interface HandlerOptions extends Omit<WebOptions, 'tokenFile'> {
  /** The web token file (default $XDG_CONFIG_HOME/osfarm/web-token or ~/.config/osfarm/web-token). */
  tokenFile?: string;
  /** The pull endpoints `/images/…` (default on); `maxConcurrent` requests at once (default 64). */
  pull?: boolean | { maxConcurrent?: number };
}

/** The handler of `createHandler`: answers what it serves, leaves the rest to the caller. */
export interface OsfarmHandler extends AsyncDisposable {
  /** Resolves true if it answered the request, false if the path is not osfarm's. */
  handler(req: IncomingMessage, res: ServerResponse): Promise<boolean>;
  /** The pull endpoints (their `stats`), when on. */
  pull?: PullHandler;
  /** The web front end (its token). */
  web: WebHandler;
  /** Cancels the web's jobs and waits for builds to tear down. Safe to call twice. */
  close(): Promise<void>;
}

export interface ServeOptions extends HandlerOptions {
  /** Default 127.0.0.1. */
  host?: string;
  /** 0 (default) picks a free port. */
  port?: number;
  /** Your own handlers, asked before osfarm's. */
  handlers?: HttpHandler[];
  /** Serve HTTPS with this certificate chain and key (PEM), so the web token never crosses in clear. */
  tls?: TlsServerOptions;
}

/** A running `serve()`: where it listens and what it serves; close it (or `await using` it) to stop. */
export interface OsfarmServer extends Serving {
  pull?: PullHandler;
  web: WebHandler;
}

/** The pull endpoints and the web front end of a repository as one request handler. */
export async function createHandler(options: HandlerOptions): Promise<OsfarmHandler> {
  const { pull: pullOption = true, tokenFile, ...webOptions } = options;
  const pull = pullOption === false ? undefined : createPullHandler({ repo: options.repo, ...(pullOption === true ? {} : pullOption) });
  const web = await createWebHandler({ ...webOptions, tokenFile: tokenFile ?? defaultTokenFile() });
  const chain = pull ? [pull, web.handler] : [web.handler];
  let closing: Promise<void> | undefined;
  const close = () => (closing ??= web.close());
  return {
    async handler(req, res) {
      for (const h of chain) if (await h(req, res)) return true;
      return false;
    },
    ...(pull ? { pull } : {}),
    web,
    close,
    [Symbol.asyncDispose]: close,
  };
}

/** `osfarm serve` in a call: the repository for pull and the web GUI and REST API on one port. */
export async function serve(options: ServeOptions): Promise<OsfarmServer> {
  const { host, port, handlers = [], tls, ...handlerOptions } = options;
  const h = await createHandler(handlerOptions);
  try {
    const s = await serveHandlers({ host, port, handlers: [...handlers, h.handler], onClose: () => h.close(), tls });
    return { ...s, ...(h.pull ? { pull: h.pull } : {}), web: h.web };
  } catch (err) {
    await h.close();
    throw err;
  }
}
