/** The TLS options shared by push, receive and serve (docs/trust.md): TLS, or an explicit --insecure. */
import { invalidArgument } from '../base/errors.js';
import { readPem, type TlsClientOptions, type TlsServerOptions } from '../trust/tls.js';
import { type Flags, flag, type ParsedArgs, str } from './command.js';

export const SERVER_TLS_OPTIONS: Flags = {
  'tls-cert': { type: 'string', value: 'FILE', complete: 'file', description: 'the server certificate (PEM) for TLS; with --tls-key' },
  'tls-key': { type: 'string', value: 'FILE', complete: 'file', description: 'the certificate\'s private key (PEM)' },
  insecure: { type: 'boolean', description: 'run without TLS (everything in clear: a trusted network only)' },
};
export const CLIENT_TLS_OPTIONS: Flags = {
  'tls-fingerprint': { type: 'string', value: 'SHA256', description: 'pin the receiver\'s certificate by its SHA-256 fingerprint (receive prints it)' },
  'tls-ca': { type: 'string', value: 'FILE', complete: 'file', description: 'trust the receiver\'s certificate if this CA (PEM) signed it' },
  insecure: { type: 'boolean', description: 'push without TLS (the image in clear: a trusted network only)' },
};

/** --tls-cert/--tls-key, or undefined with --insecure; neither is refused (plain TCP must be asked for). */
export function serverTls(args: ParsedArgs, command: string): TlsServerOptions | undefined {
  const cert = str(args, 'tls-cert');
  const key = str(args, 'tls-key');
  if ((cert === undefined) !== (key === undefined)) throw invalidArgument(`${command}: --tls-cert and --tls-key go together`);
  if (cert !== undefined && key !== undefined) return { cert: readPem(cert, '--tls-cert'), key: readPem(key, '--tls-key') };
  if (!flag(args, 'insecure')) {
    throw invalidArgument(`${command} without TLS sends everything in clear: give --tls-cert FILE --tls-key FILE, or --insecure on a trusted network`);
  }
  return undefined;
}

/** --tls-fingerprint and/or --tls-ca, or undefined with --insecure. */
export function clientTls(args: ParsedArgs, command: string): TlsClientOptions | undefined {
  const fingerprint = str(args, 'tls-fingerprint');
  const ca = str(args, 'tls-ca');
  if (fingerprint !== undefined || ca !== undefined) {
    return { ...(fingerprint !== undefined ? { fingerprint } : {}), ...(ca !== undefined ? { ca: readPem(ca, '--tls-ca') } : {}) };
  }
  if (!flag(args, 'insecure')) {
    throw invalidArgument(`${command} without TLS sends the image in clear: pin the receiver's certificate with --tls-fingerprint SHA256 (receive prints it) or give --tls-ca FILE, or --insecure on a trusted network`);
  }
  return undefined;
}
