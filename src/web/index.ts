/**
 * The web GUI and REST API of `osfarm serve`: the request handler (handler.ts), and what
 * `osfarm serve` serves as one handler or on a port of its own (server.ts). docs/web.md
 * describes it.
 */
export { createWebHandler, type WebHandler, type WebOptions } from './handler.js';
export { defaultTokenFile, loadOrCreateToken } from './auth.js';
export { JobQueue, type JobEvent, type JobInfo } from './jobs.js';
export { createHandler, serve, type HandlerOptions, type OsfarmHandler, type OsfarmServer, type ServeOptions } from './server.js';
