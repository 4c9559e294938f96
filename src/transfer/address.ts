import type { Server } from 'node:net';

import { invalidArgument, OsfarmError } from '../base/errors.js';

/** "host:port", "[v6]:port" or ":port" (all interfaces) into its parts. */
export function parseAddress(address: string, defaultHost = '127.0.0.1'): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d+)$/.exec(address.trim());
  if (!m) throw invalidArgument(`'${address}' is not host:port`);
  const port = Number(m[3]);
  if (port > 65535) throw invalidArgument(`port ${port} is out of range`);
  const host = m[1] ?? m[2] ?? '';
  return { host: host === '' ? defaultHost : host, port };
}

/**
 * Listens on host:port, with the failures a user can fix as osfarm errors: the port is
 * taken (OSFARM_ADDRESS_IN_USE), a port below 1024 without root, an address that is not
 * this machine's (OSFARM_INVALID_ARGUMENT).
 */
export function listenOn(server: Server, host: string, port: number): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const onError = (err: NodeJS.ErrnoException) => {
      const where = `${host.includes(':') ? `[${host}]` : host}:${port}`;
      if (err.code === 'EADDRINUSE') reject(new OsfarmError('OSFARM_ADDRESS_IN_USE', `${where} is already in use (another osfarm serve or receive?): stop it, or give another port with --listen`, { cause: err }));
      else if (err.code === 'EACCES') reject(invalidArgument(`${where}: listening on a port below 1024 needs root; give a port of 1024 or more with --listen`));
      else if (err.code === 'EADDRNOTAVAIL') reject(invalidArgument(`${where}: ${host} is not an address of this machine; give one of its addresses, or 0.0.0.0 for all`));
      else reject(err);
    };
    server.once('error', onError);
    server.listen(port, host, () => {
      server.off('error', onError);
      resolve();
    });
  });
}
