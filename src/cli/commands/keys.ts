/** `osfarm keys …`: the repository's signing key and the keys it trusts (docs/trust.md). */
import { writeFileSync } from 'node:fs';

import { exportPublicKey, generateKeys, type KeyInfo, listKeys, trustKey } from '../../trust/keys.js';
import { type Command, flag, str } from '../command.js';
import { table } from '../format.js';

const generate: Command<KeyInfo> = {
  name: 'generate',
  summary: "make the repository's Ed25519 signing key (keys/signing.key, mode 0600); images it builds or accepts are then signed",
  usage: ['[--force]'],
  options: { force: { type: 'boolean', description: 'replace an existing signing key (images signed by the old one stay verifiable only with its public key)' } },
  examples: [{ command: 'osfarm keys generate --repo /srv/osfarm', what: 'sign every image /srv/osfarm builds, is given or accepts from now on' }],
  async run(args, ctx) {
    return generateKeys(ctx.repoPath, { force: flag(args, 'force') });
  },
  render: (k) => `signing key ${k.keyId}; its public key (give it to pulls as --trust): ${k.path}`,
};

const list: Command<{ keys: KeyInfo[] }> = {
  name: 'ls',
  aliases: ['list'],
  summary: 'the signing key and the trusted keys (trust store)',
  usage: [''],
  examples: [{ command: 'osfarm keys ls', what: 'which key signs, and which keys pulls into this repository require' }],
  async run(_args, ctx) {
    return { keys: listKeys(ctx.repoPath) };
  },
  render: (r) => (r.keys.length ? table(r.keys.map((k) => [k.role, k.keyId, k.publicKey, k.path]), ['role', 'key id', 'public key', 'file']) : "no keys: make one with 'osfarm keys generate'"),
};

const exportKey: Command<{ keyId: string; publicKey: string; path?: string }> = {
  name: 'export',
  summary: 'print the public signing key in minisign format (or write it with --out FILE)',
  usage: ['[--out FILE]'],
  options: { out: { type: 'string', short: 'o', value: 'FILE', complete: 'file', description: 'write the public key to FILE instead of printing it' } },
  examples: [{ command: 'osfarm keys export -o build1.pub', what: 'the public key that pulls from this repository give as --trust build1.pub' }],
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
  usage: ['KEYFILE'],
  operands: { complete: 'file', min: 1, max: 1 },
  examples: [{ command: 'osfarm keys trust build1.pub', what: 'pulls into this repository now need images signed by build1' }],
  async run(args, ctx) {
    return trustKey(ctx.repoPath, args.positionals[0]!);
  },
  render: (k) => `trusting key ${k.keyId} (${k.path})`,
};

const command: Command = {
  name: 'keys',
  section: 'transfer',
  summary: 'signing keys and trusted keys: generate, ls, export, trust (signed image manifests)',
  usage: [],
  subcommands: [generate, list, exportKey, trust] as Command[],
};
export default command;
