/**
 * The web GUI and REST API of `osfarm serve`: the request handler (handler.ts), and that
 * handler on its own HTTP server (server.ts). docs/web.md describes it.
 */
export { createWebHandler, type WebHandler, type WebOptions } from './handler.js';
export { defaultTokenFile, loadOrCreateToken } from './auth.js';
export { JobQueue, type JobEvent, type JobInfo } from './jobs.js';
export { startServer, type ServerOptions, type StartedServer } from './server.js';
