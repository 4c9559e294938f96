/**
 * The push protocol's framing (docs/protocol.md): an 8-byte magic, then frames of
 * `u32 payload length | u8 type | payload`. The reader refuses an oversized frame from its
 * header alone, before buffering any of its payload.
 */
import { OsfarmError } from '../../base/errors.js';

/** "\x89OSFP\r\n\x1a": sent first by both sides. */
export const MAGIC = Buffer.from([0x89, 0x4f, 0x53, 0x46, 0x50, 0x0d, 0x0a, 0x1a]);
/**
 * The protocol versions this osfarm speaks, preferred first. 2 sends one digest per
 * content-defined group of blocks instead of every block digest; 1 is kept for older peers.
 */
export const PROTOCOL_VERSIONS: readonly number[] = [2, 1];
export const HEADER_LEN = 5;
/** Payload limit until authentication has succeeded. */
export const PRE_AUTH_MAX_FRAME = 64 << 10;
/** Payload limit afterwards (announced in WELCOME). */
export const DEFAULT_MAX_FRAME = 4 << 20;
/** Largest run of block data asked for in one REQUEST record (one BLOCKS frame). */
export const MAX_RUN_BYTES = 1 << 20;

export const FrameType = {
  HELLO: 0x01,
  WELCOME: 0x02,
  AUTH: 0x03,
  AUTH_OK: 0x04,
  IMAGE: 0x05,
  ACCEPT: 0x06,
  DIGESTS: 0x10,
  REQUEST: 0x11,
  BLOCKS: 0x12,
  END: 0x13,
  DONE: 0x14,
  GROUPS: 0x15,
  NEED_DIGESTS: 0x16,
  ERROR: 0x7f,
  PROGRESS: 0x80,
  KEEPALIVE: 0x81,
} as const;
export type FrameTypeId = (typeof FrameType)[keyof typeof FrameType];

const NAMES = new Map<number, string>(Object.entries(FrameType).map(([k, v]) => [v, k]));
export function frameName(type: number): string {
  return NAMES.get(type) ?? `0x${type.toString(16).padStart(2, '0')}`;
}

/** True for types a peer may ignore when it does not know them (0x80-0xFF). */
export function isOptional(type: number): boolean {
  return type >= 0x80;
}

export function protocolError(message: string): OsfarmError {
  return new OsfarmError('OSFARM_PROTOCOL', message);
}

/** A frame header (5 bytes) for a payload of `length` bytes. */
export function header(type: number, length: number): Buffer {
  const h = Buffer.allocUnsafe(HEADER_LEN);
  h.writeUInt32LE(length, 0);
  h.writeUInt8(type, 4);
  return h;
}

export function jsonPayload(value: unknown): Buffer {
  return Buffer.from(JSON.stringify(value), 'utf8');
}

/** Parses a control payload: one JSON object, else a protocol error. */
export function parseJson(type: number, payload: Buffer): Record<string, unknown> {
  let v: unknown;
  try {
    v = JSON.parse(payload.toString('utf8'));
  } catch {
    throw protocolError(`${frameName(type)} frame is not valid JSON`);
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw protocolError(`${frameName(type)} frame is not a JSON object`);
  return v as Record<string, unknown>;
}

// ----- binary payloads -----

export interface Run {
  first: number;
  count: number;
}

export function digestsPayload(first: number, digests: Buffer): Buffer[] {
  const h = Buffer.allocUnsafe(8);
  h.writeBigUInt64LE(BigInt(first), 0);
  return [h, digests];
}

export function parseDigests(payload: Buffer, digestLen: number): { first: number; digests: Buffer } {
  if (payload.length < 8 + digestLen || (payload.length - 8) % digestLen !== 0) {
    throw protocolError(`DIGESTS frame of ${payload.length} bytes is not 8 + k × ${digestLen}`);
  }
  return { first: readU64(payload, 0), digests: payload.subarray(8) };
}

/** A GROUPS payload: the first block the groups cover, then the grouper's records. */
export function groupsPayload(first: number, records: Buffer): Buffer[] {
  const h = Buffer.allocUnsafe(8);
  h.writeBigUInt64LE(BigInt(first), 0);
  return [h, records];
}

export function parseGroups(payload: Buffer): { first: number; records: Buffer } {
  if (payload.length <= 8) throw protocolError(`GROUPS frame of ${payload.length} bytes carries no group`);
  return { first: readU64(payload, 0), records: payload.subarray(8) };
}

/** REQUEST and NEED_DIGESTS payloads: runs of blocks, 12 bytes each. */
export function requestPayload(runs: Run[]): Buffer {
  const b = Buffer.allocUnsafe(12 * runs.length);
  runs.forEach((r, i) => {
    b.writeBigUInt64LE(BigInt(r.first), 12 * i);
    b.writeUInt32LE(r.count, 12 * i + 8);
  });
  return b;
}

export function parseRequest(payload: Buffer, what = 'REQUEST'): Run[] {
  if (payload.length === 0 || payload.length % 12 !== 0) throw protocolError(`${what} frame of ${payload.length} bytes is not a list of 12-byte runs`);
  const runs: Run[] = [];
  for (let at = 0; at < payload.length; at += 12) {
    const count = payload.readUInt32LE(at + 8);
    if (count === 0) throw protocolError(`${what} for an empty run`);
    runs.push({ first: readU64(payload, at), count });
  }
  return runs;
}

export const BLOCKS_HEADER_LEN = 16;

export function blocksHeader(first: number, count: number, encoding: number): Buffer {
  const h = Buffer.alloc(BLOCKS_HEADER_LEN);
  h.writeBigUInt64LE(BigInt(first), 0);
  h.writeUInt32LE(count, 8);
  h.writeUInt8(encoding, 12);
  return h;
}

/** BLOCKS encodings: raw, one zstd frame per run, the transfer's zstd stream (v2 only). */
export const Encoding = { RAW: 0, ZSTD: 1, ZSTD_STREAM: 2 } as const;

export function parseBlocks(payload: Buffer, version: number): { first: number; count: number; encoding: number; data: Buffer } {
  if (payload.length < BLOCKS_HEADER_LEN) throw protocolError(`BLOCKS frame of ${payload.length} bytes is shorter than its header`);
  const encoding = payload.readUInt8(12);
  if (encoding > (version >= 2 ? Encoding.ZSTD_STREAM : Encoding.ZSTD)) throw protocolError(`BLOCKS frame with unknown encoding ${encoding}`);
  return { first: readU64(payload, 0), count: payload.readUInt32LE(8), encoding, data: payload.subarray(BLOCKS_HEADER_LEN) };
}

function readU64(b: Buffer, at: number): number {
  const v = b.readBigUInt64LE(at);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw protocolError(`block number ${v} is out of range`);
  return Number(v);
}

// ----- the incremental reader -----

export interface Frame {
  type: number;
  payload: Buffer;
}

/**
 * Cuts a byte stream into frames. `push` takes socket chunks and returns the complete
 * frames; it throws OSFARM_PROTOCOL on a bad magic or a frame above `maxFrame`, checked
 * from the header before any payload is kept. The work is linear in the bytes however they
 * are cut: a payload that spans chunks is copied into one buffer of its announced size as
 * its bytes arrive (a peer dripping a frame byte by byte used to cost time quadratic in
 * the frame's size, minutes of the event loop for 64 KiB), and one that lies within a
 * chunk is returned without a copy.
 */
export class FrameReader {
  /** The magic or the frame header being read, and how much of it has arrived. */
  private readonly head = Buffer.alloc(MAGIC.length);
  private headLen = 0;
  private magicSeen = false;
  /** The frame whose payload is arriving. */
  private pending: { type: number; payload: Buffer; filled: number } | undefined;
  /** The largest payload accepted now. */
  maxFrame: number;

  constructor(maxFrame = PRE_AUTH_MAX_FRAME, private readonly what = 'peer') {
    this.maxFrame = maxFrame;
  }

  /** Bytes received that are not part of a returned frame yet. */
  get bufferedBytes(): number {
    return this.headLen + (this.pending?.filled ?? 0);
  }

  push(chunk: Buffer): Frame[] {
    const out: Frame[] = [];
    let at = 0;
    while (at < chunk.length) {
      if (this.pending) {
        const p = this.pending;
        const n = chunk.copy(p.payload, p.filled, at);
        p.filled += n;
        at += n;
        if (p.filled === p.payload.length) {
          out.push({ type: p.type, payload: p.payload });
          this.pending = undefined;
        }
        continue;
      }
      const want = this.magicSeen ? HEADER_LEN : MAGIC.length;
      const n = chunk.copy(this.head, this.headLen, at, at + want - this.headLen);
      this.headLen += n;
      at += n;
      if (!this.magicSeen) {
        if (!MAGIC.subarray(0, this.headLen).equals(this.head.subarray(0, this.headLen))) throw this.badMagic();
        if (this.headLen === MAGIC.length) {
          this.magicSeen = true;
          this.headLen = 0;
        }
        continue;
      }
      if (this.headLen < HEADER_LEN) break;
      this.headLen = 0;
      const length = this.head.readUInt32LE(0);
      const type = this.head.readUInt8(4);
      if (length > this.maxFrame) {
        throw protocolError(`${frameName(type)} frame of ${length} bytes exceeds the limit of ${this.maxFrame} bytes`);
      }
      if (at + length <= chunk.length) {
        out.push({ type, payload: chunk.subarray(at, at + length) });
        at += length;
      } else {
        this.pending = { type, payload: Buffer.allocUnsafe(length), filled: 0 };
      }
    }
    return out;
  }

  private badMagic(): OsfarmError {
    return protocolError(`the ${this.what} does not speak the osfarm push protocol (bad magic)`);
  }
}
