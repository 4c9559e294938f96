/**
 * The shared token of push: challenge-response with HMAC-SHA256 over both sides' fresh
 * nonces, so the token never crosses the wire and a recorded exchange cannot be replayed;
 * macs are compared in constant time. See docs/protocol.md, "AUTH".
 */
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';

import { tokenFromEnv } from '../../base/env.js';
import { invalidArgument, OsfarmError } from '../../base/errors.js';

export const NONCE_LEN = 32;

export function newNonce(): Buffer {
  return randomBytes(NONCE_LEN);
}

export function mac(token: string, role: 'client' | 'server', clientNonce: Buffer, serverNonce: Buffer): Buffer {
  return createHmac('sha256', token)
    .update(`osfarm push v1 ${role}\0`)
    .update(clientNonce)
    .update(serverNonce)
    .digest();
}

/** Compares a received hex mac with the expected one in constant time. */
export function macMatches(receivedHex: unknown, expected: Buffer): boolean {
  if (typeof receivedHex !== 'string' || !/^[0-9a-f]*$/i.test(receivedHex)) return false;
  const got = Buffer.from(receivedHex, 'hex');
  // timingSafeEqual needs equal lengths; compare against a same-length buffer either way
  // so a wrong length takes the same time as a wrong value.
  const same = got.length === expected.length;
  return timingSafeEqual(same ? got : Buffer.alloc(expected.length), expected) && same;
}

export function parseNonce(hex: unknown, what: string): Buffer {
  if (typeof hex !== 'string' || !/^[0-9a-f]{64}$/i.test(hex)) {
    throw new OsfarmError('OSFARM_PROTOCOL', `${what} carries no valid 32-byte nonce`);
  }
  return Buffer.from(hex, 'hex');
}

export interface TokenOptions {
  token?: string;
  tokenFile?: string;
  env?: NodeJS.ProcessEnv;
}

/** The token from --token, else --token-file (first line), else $OSFARM_TOKEN; undefined if none. */
export function resolveToken(o: TokenOptions): string | undefined {
  if (o.token !== undefined && o.tokenFile !== undefined) {
    throw invalidArgument('give either --token or --token-file, not both');
  }
  let token = o.token;
  if (o.tokenFile !== undefined) {
    try {
      token = readFileSync(o.tokenFile, 'utf8').split('\n')[0]!.trim();
    } catch (err) {
      throw new OsfarmError('OSFARM_IO', `cannot read the token file ${o.tokenFile}: ${(err as Error).message}`);
    }
  }
  token ??= tokenFromEnv(o.env);
  if (token !== undefined && token.length === 0) throw invalidArgument('the token is empty');
  return token;
}
