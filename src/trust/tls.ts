/**
 * TLS for push, receive and serve (docs/trust.md): the server's certificate and key from PEM
 * files, and the client's checks — the server certificate's SHA-256 fingerprint pinned, or
 * its chain checked against a CA file — made before a byte of the protocol is sent.
 */
import { readFileSync } from 'node:fs';
import type { TLSSocket } from 'node:tls';
import { X509Certificate } from 'node:crypto';

import { OsfarmError } from '../base/errors.js';

/** A server's certificate chain and private key (PEM). */
export interface TlsServerOptions {
  cert: string | Buffer;
  key: string | Buffer;
}

/** How a client trusts the server: a pinned certificate fingerprint, a CA, or both. */
export interface TlsClientOptions {
  /** The server certificate's SHA-256 fingerprint (64 hex digits, colons optional), as `receive`/`serve` print it. */
  fingerprint?: string;
  /** CA certificates (PEM) the server's chain must lead to; its name is then checked too. */
  ca?: string | Buffer;
}

/** Node's codes for a certificate that does not verify: retrying cannot help. */
const UNTRUSTED_CERT = new Set([
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'CERT_UNTRUSTED',
  'CERT_HAS_EXPIRED',
  'CERT_NOT_YET_VALID',
  'CERT_REVOKED',
  'ERR_TLS_CERT_ALTNAME_INVALID',
]);

/** True for an error that says a peer's certificate is not trusted. */
export function isCertificateError(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  return code !== undefined && UNTRUSTED_CERT.has(code);
}

/** Reads a PEM file for a TLS option, with an error that names the option. */
export function readPem(path: string, option: string): Buffer {
  try {
    return readFileSync(path);
  } catch (err) {
    throw new OsfarmError('OSFARM_INVALID_ARGUMENT', `${option} ${path}: ${(err as Error).message}`, { cause: err });
  }
}

/** A fingerprint as Node prints it (`AB:CD:…`, uppercase); refuses anything but 32 bytes of hex. */
export function normalizeFingerprint(text: string): string {
  const hex = text.replace(/^sha256:/i, '').replace(/[:\s]/g, '').toUpperCase();
  if (!/^[0-9A-F]{64}$/.test(hex)) {
    throw new OsfarmError('OSFARM_INVALID_ARGUMENT', `'${text}' is not a SHA-256 certificate fingerprint (64 hex digits, colons optional; receive and serve print it)`);
  }
  return hex.match(/../g)!.join(':');
}

/** The SHA-256 fingerprint of a PEM certificate's first certificate (what clients pin). */
export function certificateFingerprint(cert: string | Buffer): string {
  try {
    return new X509Certificate(cert).fingerprint256;
  } catch (err) {
    throw new OsfarmError('OSFARM_INVALID_ARGUMENT', `not a PEM certificate: ${(err as Error).message}`, { cause: err });
  }
}

/** Options for tls.connect: with a pin alone, the chain is not checked against CAs (the pin is stronger). */
export function clientTlsOptions(o: TlsClientOptions, host: string): { rejectUnauthorized: boolean; ca?: string | Buffer; servername?: string } {
  if (o.fingerprint === undefined && o.ca === undefined) {
    throw new OsfarmError('OSFARM_INVALID_ARGUMENT', 'TLS needs the server certificate pinned (fingerprint) or a CA to check it against');
  }
  const isIp = /^[\d.]+$|:/.test(host);
  return { rejectUnauthorized: o.ca !== undefined, ...(o.ca !== undefined ? { ca: o.ca } : {}), ...(isIp ? {} : { servername: host }) };
}

/** After the handshake: the peer's certificate must carry the pinned fingerprint. Throws OSFARM_UNAUTHORIZED otherwise. */
export function checkPinned(socket: TLSSocket, o: TlsClientOptions, where: string): void {
  if (o.fingerprint === undefined) return;
  const want = normalizeFingerprint(o.fingerprint);
  const got = socket.getPeerCertificate()?.fingerprint256;
  if (got !== want) {
    throw new OsfarmError('OSFARM_UNAUTHORIZED', `the TLS certificate of ${where} has fingerprint ${got ?? '(none)'}, not the pinned ${want}: not sending anything to it`);
  }
}
