import { invalidArgument } from '../base/errors.js';

/** "host:port", "[v6]:port" or ":port" (all interfaces) into its parts. */
export function parseAddress(address: string, defaultHost = '127.0.0.1'): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d+)$/.exec(address.trim());
  if (!m) throw invalidArgument(`'${address}' is not host:port`);
  const port = Number(m[3]);
  if (port > 65535) throw invalidArgument(`port ${port} is out of range`);
  const host = m[1] ?? m[2] ?? '';
  return { host: host === '' ? defaultHost : host, port };
}
