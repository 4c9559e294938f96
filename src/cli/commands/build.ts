/** `osfarm build`: a spec file and/or genfs-style flags in, images out. The logic lives in src/spec/ and src/builder/. */
import { readFileSync } from 'node:fs';

import { invalidArgument } from '../../base/errors.js';
import { mirrorsFromEnv } from '../../base/env.js';
import { build, type BuildEvent, type BuildOptions, type BuildResult } from '../../builder/index.js';
import { type BuildSpec, canonicalSpec, type CanonicalSpec, loadSpec, outputFormatOfPath, parseTarget, setOnChain, SPEC_FIELDS, SpecError, specDigest, specFromObject } from '../../spec/index.js';
import { repositoryParents } from '../../images/index.js';
import { cowMethod } from '../../stages/cow/index.js';
import { type Command, flag, type OptionSpec, type ParsedArgs, str, strs } from '../command.js';
import { bytes, table } from '../format.js';

/** The options of the spec fields that have a flag (spec/fields.ts). */
function specFlags(): OptionSpec {
  const out: OptionSpec = {};
  for (const { flag: f } of SPEC_FIELDS) {
    if (f) out[f.name] = { type: 'string', ...(f.short ? { short: f.short } : {}), ...(f.list ? { multiple: true } : {}) };
  }
  return out;
}

type Result = BuildResult | { check: true; specDigest: string; spec: CanonicalSpec };

/** Values of a repeatable option, each also split at commas (`-g Base,Core` = `-g Base -g Core`). */
function listOf(args: ParsedArgs, name: string): string[] {
  return strs(args, name).flatMap((v) => v.split(',')).map((v) => v.trim()).filter((v) => v !== '');
}

function readPassword(args: ParsedArgs): string | undefined {
  const file = str(args, 'root-password-file');
  const plain = str(args, 'root-password');
  if (file !== undefined && plain !== undefined) throw invalidArgument('give --root-password or --root-password-file, not both');
  if (file !== undefined) {
    const text = readFileSync(file === '-' ? 0 : file, 'utf8');
    return text.replace(/\r?\n$/, '');
  }
  if (plain !== undefined) {
    // Overwrites the process's argument area on Linux, so `ps` stops showing the password.
    process.title = 'osfarm build';
  }
  return plain;
}

/** The spec as a plain object: the spec file (if any) with the flags on top. */
function rawSpec(args: ParsedArgs, repoPath: string): { raw: Record<string, unknown>; baseDir?: string } {
  const [file, extra] = args.positionals;
  if (extra !== undefined) throw invalidArgument(`build takes one spec file (got ${args.positionals.length} arguments; list groups and packages with commas: -g Base,Core)`);
  let raw: Record<string, unknown> = {};
  let baseDir: string | undefined;
  if (file !== undefined) {
    // Parse and validate the file on its own first, so its errors name its fields.
    // A parent may also be named by an image in the repository (its spec is kept there).
    const spec = loadSpec(file, { resolveParent: repositoryParents(repoPath) });
    raw = { ...spec } as unknown as Record<string, unknown>;
    baseDir = process.cwd();
  }
  const target = str(args, 'target');
  if (target !== undefined) Object.assign(raw, parseTarget(target));
  // The spec fields with a flag of their own (spec/fields.ts): a scalar is set, a list added to or replaced.
  for (const { name, flag: f } of SPEC_FIELDS) {
    if (!f) continue;
    if (!f.list) {
      const v = str(args, f.name);
      if (v !== undefined) raw[name] = v;
      continue;
    }
    const values = f.commas ? listOf(args, f.name) : strs(args, f.name);
    if (values.length > 0) raw[name] = f.list === 'append' ? [...((raw[name] as string[] | undefined) ?? []), ...values] : values;
  }
  if (raw.mirrors === undefined || (raw.mirrors as unknown[]).length === 0) {
    const fromEnv = mirrorsFromEnv();
    if (fromEnv.length > 0) raw.mirrors = fromEnv;
  }
  const files = strs(args, 'file').map((f, i) => {
    const at = f.lastIndexOf(':');
    if (at <= 0) throw invalidArgument(`--file ${JSON.stringify(f)} (the ${i + 1}. one): write SOURCE:DESTINATION, e.g. ./motd:/etc/motd`);
    return { source: f.slice(0, at), destination: f.slice(at + 1) };
  });
  if (files.length > 0) raw.files = [...((raw.files as unknown[] | undefined) ?? []), ...files];
  // --user NAME[:AUTHORIZED_KEYS_FILE] (repeatable): a user, with the SSH public keys of that file.
  const users = strs(args, 'user').map((u, i) => {
    const at = u.indexOf(':');
    const name = at < 0 ? u : u.slice(0, at);
    if (at < 0) return { name, sshKeys: [] };
    const file = u.slice(at + 1);
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch (err) {
      throw invalidArgument(`--user ${JSON.stringify(u)} (the ${i + 1}. one): cannot read the key file ${file} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message}); write NAME:FILE, e.g. root:$HOME/.ssh/id_ed25519.pub`);
    }
    return { name, sshKeys: text.split('\n').map((l) => l.trim()).filter((l) => l !== '' && !l.startsWith('#')) };
  });
  if (users.length > 0) raw.users = [...((raw.users as unknown[] | undefined) ?? []), ...users];
  if (flag(args, 'no-gpg-check')) raw.gpgCheck = false;
  const password = readPassword(args);
  if (password !== undefined) {
    delete raw.rootPasswordHash;
    raw.rootPassword = password;
  }
  // The package source given here is that of the whole chain: a stage keeps its parent's.
  const chainWide = { ...(raw.mirrors !== undefined ? { mirrors: raw.mirrors as string[] } : {}), ...(raw.gpgCheck === false ? { gpgCheck: false } : {}) };
  if (raw.parent && Object.keys(chainWide).length > 0) raw.parent = setOnChain(raw.parent as BuildSpec, chainWide);
  if (file === undefined && raw.distribution === undefined) {
    throw new SpecError([{ path: 'spec.distribution', message: 'is required: give a spec file, or -t <distribution>-<release>[-<arch>] (e.g. -t debian-bookworm-amd64)' }]);
  }
  return { raw, baseDir };
}

const command: Command<Result> = {
  name: 'build',
  summary: 'build an image in a chroot from a spec (YAML, JSON, XML) or genfs-style flags',
  usage: [
    'build SPEC.yaml|SPEC.json|SPEC.xml [flags]',
    'build -t debian-bookworm-amd64 -d WORKDIR -o IMAGE.tar.gz -g minbase,ssh-server -p python3,vim -w PASSWORD',
    'build ... [--format tar|tar.gz|ext4|disk|qcow2|squashfs|oci] [--mirror URL] [--file SRC:DEST] [--run CMD] [--hostname H] [--locale L] [--timezone TZ]',
    'build ... [--kernel on|off|PACKAGE] [--firmware hybrid|uefi|bios] [--serial-console on|off] [--network dhcp|none] [--user NAME[:KEYS.pub]] [--cloud-init none|cloud|nocloud]   (bootable disks: docs/disk.md)',
    'build ... [--root-password-file FILE|-] [--backend mmdebstrap|debootstrap|dnf|yum] [--source-date-epoch N] [--no-repo] [--keep-tree] [--check] [-v]',
    'build ... [--stages DIR] [--cow auto|btrfs|overlayfs|reflink|copy] [--stages-max-size N] [--rebuild]   (stages: docs/stages.md)',
  ].join('\n'),
  options: {
    ...specFlags(),
    target: { type: 'string', short: 't' },
    'work-dir': { type: 'string', short: 'd' },
    output: { type: 'string', short: 'o' },
    'root-password': { type: 'string', short: 'w' },
    'root-password-file': { type: 'string' },
    file: { type: 'string', multiple: true },
    user: { type: 'string', multiple: true },
    'no-gpg-check': { type: 'boolean' },
    'no-repo': { type: 'boolean' },
    'keep-tree': { type: 'boolean' },
    check: { type: 'boolean' },
    verbose: { type: 'boolean', short: 'v' },
    stages: { type: 'string' },
    cow: { type: 'string' },
    'stages-max-size': { type: 'string' },
    rebuild: { type: 'boolean' },
  },
  allowPositionals: true,
  async run(args, ctx) {
    const { raw, baseDir } = rawSpec(args, ctx.repoPath);
    const output = str(args, 'output');
    // `-o image.tar.gz` with no --format and no outputs in the spec file: the ending picks the format.
    if (output !== undefined && raw.outputs === undefined) {
      const f = outputFormatOfPath(output);
      if (f) raw.outputs = [f];
    }
    const cow = str(args, 'cow');
    if (cow !== undefined && cow !== 'auto') cowMethod(cow);
    const spec = specFromObject(raw, { baseDir });
    if (flag(args, 'check')) return { check: true, specDigest: specDigest(spec), spec: canonicalSpec(spec) };

    const verbose = flag(args, 'verbose');
    let bar: ReturnType<typeof ctx.progress> | undefined;
    let barPhase = '';
    const tail: string[] = [];
    const onEvent = (e: BuildEvent) => {
      if (e.type !== 'result') ctx.event(e as unknown as Record<string, unknown>); // the result is printed once, last
      if (e.type === 'log') {
        tail.push(e.line);
        if (tail.length > 20) tail.shift();
        if (verbose) ctx.info(`  ${e.line}`);
      } else if (e.type === 'phase') {
        bar?.done();
        bar = undefined;
        ctx.info(`[${(e.elapsedMs / 1000).toFixed(1).padStart(6)} s] ${e.phase}${e.detail ? ` (${e.detail})` : ''}`);
      } else if (e.type === 'progress') {
        const label = `${e.phase} ${e.detail ?? ''}`.trim();
        if (!bar || barPhase !== label) {
          bar?.done();
          bar = ctx.progress(label);
          barPhase = label;
        }
        bar.update(e.done, e.total);
      }
    };
    try {
      return await build(spec, {
        workDir: str(args, 'work-dir'),
        output,
        repo: ctx.repoPath,
        noRepo: flag(args, 'no-repo'),
        keepTree: flag(args, 'keep-tree'),
        stages: str(args, 'stages'),
        cow: cow as BuildOptions['cow'],
        stagesMaxSize: str(args, 'stages-max-size'),
        rebuild: flag(args, 'rebuild'),
        onEvent,
        signal: ctx.signal,
        handleSignals: false,
      });
    } catch (err) {
      if (!verbose && !ctx.json && tail.length > 0) ctx.info(`last lines of the build log:\n${tail.map((l) => `  ${l}`).join('\n')}`);
      throw err;
    } finally {
      bar?.done();
    }
  },
  render(r) {
    if ('check' in r) return `spec is valid; digest ${r.specDigest}\n${JSON.stringify(r.spec, null, 2)}`;
    const rows = r.outputs.map((o) => [o.format, o.path, bytes(o.size), o.digest.slice(0, 16), o.inRepository ? 'yes' : 'no']);
    const stages = r.stages.map((s) => `${s.tag.slice(0, 12)} ${s.label}: ${r.cached ? 'in the repository' : s.waited ? 'reused (built by another build)' : s.hit ? 'cached' : `built in ${s.seconds.toFixed(1)} s`}`);
    return [
      r.cached
        ? `${r.name}: the repository already holds this request's images (spec digest ${r.specDigest.slice(0, 16)}); nothing built (--rebuild to build anyway)`
        : `built ${r.name} with ${r.backend} in ${(r.durationMs / 1000).toFixed(1)} s (spec digest ${r.specDigest.slice(0, 16)})`,
      ...stages.map((l) => `stage ${l}`),
      table(rows, ['format', 'image', 'size', 'digest', 'in repository']),
      `log: ${r.logPath}`,
    ].join('\n');
  },
};
export default command;
