import { writeFileSync } from 'node:fs';

import { invalidArgument } from '../../base/errors.js';
import { exportPublicKey, generateKeys, type KeyInfo, listKeys, trustKey } from '../../trust/keys.js';
import { type Command, flag, str } from '../command.js';
import { table } from '../format.js';

const generate: Command<KeyInfo> = {
  name: 'generate',
  summary: "make the repository's Ed25519 signing key (keys/signing.key, mode 0600); images it builds or accepts are then signed",
  usage: 'keys generate [--repo DIR] [--force]',
  options: { force: { type: 'boolean' } },
  async run(args, ctx) {
    return generateKeys(ctx.repoPath, { force: flag(args, 'force') });
  },
  render: (k) => `signing key ${k.keyId}; its public key (give it to pulls as --trust): ${k.path}`,
};

const list: Command<{ keys: KeyInfo[] }> = {
  name: 'list',
  summary: 'the signing key and the trusted keys (trust store)',
  usage: 'keys list [--repo DIR]',
  async run(_args, ctx) {
    return { keys: listKeys(ctx.repoPath) };
  },
  render: (r) => (r.keys.length ? table(r.keys.map((k) => [k.role, k.keyId, k.publicKey, k.path]), ['role', 'key id', 'public key', 'file']) : "no keys: make one with 'osfarm keys generate'"),
};

const exportKey: Command<{ keyId: string; publicKey: string; path?: string }> = {
  name: 'export',
  summary: 'print the public signing key in minisign format (or write it with --out FILE)',
  usage: 'keys export [--repo DIR] [--out FILE]',
  options: { out: { type: 'string', short: 'o' } },
  async run(args, ctx) {
    const { keyId, text } = exportPublicKey(ctx.repoPath);
    const out = str(args, 'out');
    if (out !== undefined) writeFileSync(out, text);
    return { keyId, publicKey: text, ...(out !== undefined ? { path: out } : {}) };
  },
  render: (r) => (r.path ? `wrote public key ${r.keyId} to ${r.path}` : r.publicKey.trimEnd()),
};

const trust: Command<KeyInfo> = {
  name: 'trust',
  summary: "add a public key to the repository's trust store: pulls into it then require that key's signature",
  usage: 'keys trust KEYFILE [--repo DIR]',
  allowPositionals: true,
  async run(args, ctx) {
    const [file, extra] = args.positionals;
    if (!file || extra) throw invalidArgument('keys trust takes one public key file (minisign format, from osfarm keys export)');
    return trustKey(ctx.repoPath, file);
  },
  render: (k) => `trusting key ${k.keyId} (${k.path})`,
};

const command: Command = {
  name: 'keys',
  usage: 'keys <generate|list|export|trust> [options]',
  subcommands: [generate, list, exportKey, trust] as Command[],
};
export default command;
