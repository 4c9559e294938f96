/** `osfarm build`: a spec file and/or genfs-style flags in, images out. The logic lives in src/spec/ and src/builder/. */
import { readFileSync } from 'node:fs';

import { defaultWorkDir, mirrorsFromEnv } from '../../base/env.js';
import { invalidArgument } from '../../base/errors.js';
import { openOrCreateRepository } from '../../app/repository.js';
import { build, type BuildEvent, type BuildOptions, type BuildResult } from '../../builder/index.js';
import { preflight } from '../../builder/preflight.js';
import { repositoryParents } from '../../images/index.js';
import { canonicalSpec, type CanonicalSpec, loadSpec, outputFormatOfPath, SPEC_FIELDS, SpecError, specDigest, specFromFlags, specFromObject } from '../../spec/index.js';
import { COW_NAMES } from '../../stages/cow/index.js';
import { type Command, type CommandContext, type Flags, flag, type ParsedArgs, str, strs } from '../command.js';
import { bytes, table } from '../format.js';

/** The flags of the spec fields that have one (spec/fields.ts). */
function specFlags(): Flags {
  const out: Flags = {};
  for (const { flag: f } of SPEC_FIELDS) {
    if (f) out[f.name] = { type: 'string', value: f.value, description: f.description, ...(f.short ? { short: f.short } : {}), ...(f.list ? { multiple: true } : {}) };
  }
  return out;
}

interface CheckResult {
  check: true;
  specDigest: string;
  spec: CanonicalSpec;
  /** The bootstrap tool the build would run. */
  backend: string;
  /** Where the package names were looked up, and what was not checked. */
  packageIndex?: string;
  notes: string[];
}

type Result = BuildResult | CheckResult;

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

/** The spec object the command line describes: the spec file (if any) with the flags on top (spec/flags.ts). */
function rawSpec(args: ParsedArgs, repoPath: string): { raw: Record<string, unknown>; baseDir?: string } {
  const [file] = args.positionals;
  // Parse and validate the file on its own first, so its errors name its fields. A parent
  // may also be named by an image in the repository (its spec is kept there).
  const spec = file === undefined ? undefined : loadSpec(file, { resolveParent: repositoryParents(repoPath) });
  const fields: Record<string, string | string[] | undefined> = {};
  for (const { name, flag: f } of SPEC_FIELDS) {
    if (!f) continue;
    fields[name] = !f.list ? str(args, f.name) : f.commas ? listOf(args, f.name) : strs(args, f.name);
  }
  const files = strs(args, 'file').map((f, i) => {
    const at = f.lastIndexOf(':');
    if (at <= 0) throw invalidArgument(`--file ${JSON.stringify(f)} (the ${i + 1}. one): write SOURCE:DESTINATION, e.g. ./motd:/etc/motd`);
    return { source: f.slice(0, at), destination: f.slice(at + 1) };
  });
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
  const raw = specFromFlags(spec, {
    target: str(args, 'target'),
    fields,
    files,
    users,
    noGpgCheck: flag(args, 'no-gpg-check'),
    rootPassword: readPassword(args),
    defaultMirrors: mirrorsFromEnv(),
  });
  return { raw, ...(spec ? { baseDir: process.cwd() } : {}) };
}

/**
 * A build from flags alone is one request to its user; its split into a core and a stage
 * above it (spec/flags.ts) is osfarm's. Its problems are named as fields of one spec.
 */
function asOneSpec(err: unknown): unknown {
  return err instanceof SpecError ? new SpecError(err.issues.map((i) => ({ ...i, path: i.path.replace(/\.parent\b/g, '') }))) : err;
}

/** The line said when the build is over, true to what happened. */
function summary(r: BuildResult): string {
  const digest = `spec digest ${r.specDigest.slice(0, 16)}`;
  if (r.cached) return `${r.name}: answered from the repository: ${r.outputs.map((o) => o.digest.slice(0, 16)).join(', ')} (${digest}); nothing built (--rebuild builds it again)`;
  const built = r.stages.filter((s) => !s.hit);
  const seconds = (r.durationMs / 1000).toFixed(1);
  if (built.length === 0) return `${r.name}: packed from cached stages in ${seconds} s; ${r.backend} did not run (${digest})`;
  const by = built.some((s) => s.parent === null) ? r.backend : 'the package manager in the parent stage';
  return `built ${r.name} in ${seconds} s: ${built.length} of ${r.stages.length} stage(s) made by ${by} (${digest})`;
}

async function runBuild(args: ParsedArgs, ctx: CommandContext): Promise<Result> {
  const { raw, baseDir } = rawSpec(args, ctx.repoPath);
  const output = str(args, 'output');
  // `-o image.tar.gz` with no --format and no outputs in the spec file: the ending picks the format.
  if (output !== undefined && raw.outputs === undefined) {
    const f = outputFormatOfPath(output);
    if (f) raw.outputs = [f];
  }
  const spec = specFromObject(raw, { baseDir });
  const workDir = str(args, 'work-dir') ?? defaultWorkDir();
  const log = (line: string) => ctx.detail(line);
  if (flag(args, 'check')) {
    const p = await preflight(spec, { workDir, signal: ctx.signal, log });
    return { check: true, specDigest: specDigest(spec), spec: canonicalSpec(spec), backend: p.driver.tool, ...(p.packageIndex ? { packageIndex: p.packageIndex } : {}), notes: p.notes };
  }
  if (!flag(args, 'no-repo') && openOrCreateRepository(ctx.repoPath).created) {
    ctx.info(`created repository ${ctx.repoPath} (it did not exist)`);
    ctx.event({ type: 'repository-created', path: ctx.repoPath });
  }

  let bar: ReturnType<typeof ctx.progress> | undefined;
  let barPhase = '';
  const tail: string[] = [];
  const onEvent = (e: BuildEvent) => {
    if (e.type !== 'result') ctx.event(e); // the result is printed once, last
    if (e.type === 'log') {
      tail.push(e.line);
      if (tail.length > 20) tail.shift();
      ctx.detail(`  ${e.line}`);
    } else if (e.type === 'phase') {
      bar?.done();
      bar = undefined;
      ctx.info(`[${(e.elapsedMs / 1000).toFixed(1).padStart(6)} s] ${e.phase}${e.detail ? ` (${e.detail})` : ''}`);
    } else if (e.type === 'progress') {
      const label = `${e.phase} ${e.detail ?? ''}`.trim();
      if (!bar || barPhase !== label) {
        bar?.done();
        bar = ctx.progress(label, e.unit);
        barPhase = label;
      }
      bar.update(e.done, e.total);
    }
  };
  try {
    return await build(spec, {
      workDir,
      output,
      repo: ctx.repoPath,
      noRepo: flag(args, 'no-repo'),
      keepTree: flag(args, 'keep-tree'),
      stages: str(args, 'stages'),
      cow: str(args, 'cow') as BuildOptions['cow'],
      stagesMaxSize: str(args, 'stages-max-size'),
      rebuild: flag(args, 'rebuild'),
      onEvent,
      signal: ctx.signal,
      handleSignals: false,
    });
  } catch (err) {
    if (!ctx.verbose && !ctx.json && !ctx.quiet && tail.length > 0) ctx.info(`last lines of the build log:\n${tail.map((l) => `  ${l}`).join('\n')}`);
    throw err;
  } finally {
    bar?.done();
  }
}

const command: Command<Result> = {
  name: 'build',
  section: 'build',
  summary: 'build an image in a chroot from a spec (YAML, JSON, XML) or genfs-style flags',
  usage: [
    'SPEC.yaml|SPEC.json|SPEC.xml [flags]',
    '-t DIST-RELEASE[-ARCH] [-g GROUP,…] [-p PKG,…] [-w PASSWORD] [-o IMAGE] [flags]',
  ],
  description: [
    'Builds stage by stage (core, then what the spec or the flags add), reusing cached stages (docs/stages.md), and adds the images to the repository (created if missing). A request the repository already holds is answered from it.',
    '',
    'Before anything runs the release, architecture and package names are checked against the release catalogue and the real package index (docs/cli.md, "Up-front checks"); --check runs only those checks.',
    '',
    'A bootable disk (--format disk or qcow2) needs a kernel (--kernel on); --network, --user, --serial-console and --cloud-init configure its first boot (docs/disk.md).',
  ].join('\n'),
  options: {
    target: { type: 'string', short: 't', value: 'DIST-RELEASE[-ARCH]', description: 'genfs-style target, e.g. debian-bookworm-amd64, ubuntu-noble, rocky-9-x86_64' },
    ...specFlags(),
    'work-dir': { type: 'string', short: 'd', value: 'DIR', complete: 'dir', description: 'work directory for builds and package caches (default $OSFARM_WORK, else ~/.cache/osfarm)' },
    output: { type: 'string', short: 'o', value: 'IMAGE', complete: 'file', description: 'where to write the image; its ending picks the format when no --format is given' },
    'root-password': { type: 'string', short: 'w', value: 'PASSWORD', description: 'root\'s password (hashed at once; prefer --root-password-file, this shows in ps until osfarm starts)' },
    'root-password-file': { type: 'string', value: 'FILE', complete: 'file', description: 'read root\'s password from FILE (- for standard input)' },
    file: { type: 'string', multiple: true, value: 'SRC:DEST', complete: 'file', description: 'copy a host file or directory into the image' },
    user: { type: 'string', multiple: true, value: 'NAME[:KEYS.pub]', description: 'a user (created unless there), with the SSH public keys of that file as its authorized keys' },
    'no-gpg-check': { type: 'boolean', description: 'do not check package signatures (a mirror without keys)' },
    'no-repo': { type: 'boolean', description: 'do not add the images to a repository (each gets an .osfi index next to it)' },
    'keep-tree': { type: 'boolean', description: 'keep a working copy of the built tree for inspection (its path is in the result)' },
    check: { type: 'boolean', description: 'only check the spec as a build would (fields, release, packages, tools) and print its canonical form' },
    stages: { type: 'string', value: 'DIR', complete: 'dir', description: 'the stage store (default $OSFARM_STAGES, else REPO/stages)' },
    cow: { type: 'string', value: 'BACKEND', choices: ['auto', ...COW_NAMES], description: 'copy-on-write backend of a new stage store' },
    'stages-max-size': { type: 'string', value: 'N', description: 'keep the stage store under N (like 20G), least recently used first (default $OSFARM_STAGES_MAX)' },
    rebuild: { type: 'boolean', description: 'build even if the repository holds this request (cached stages are still used)' },
  },
  operands: { complete: 'file', max: 1 },
  examples: [
    { command: 'osfarm build -t debian-bookworm-amd64 -g minbase -p python3,vim -o py.tar', what: 'a minbase bookworm with two packages (in a stage above a shared minbase core)' },
    { command: 'osfarm build appliance.yaml', what: 'a spec file with parents (base.yaml → core.yaml); cached stages are reused' },
    { command: 'osfarm build -t debian-bookworm -p jqq --check', what: 'check a build without running it (here: jqq is refused, did you mean jq?)' },
    { command: 'osfarm build -t debian-bookworm -g minbase --kernel on --network dhcp --user root:$HOME/.ssh/id_ed25519.pub -f qcow2 -o vm.qcow2', what: 'a bootable VM disk that takes your SSH key for root' },
    { command: 'osfarm build -t ubuntu-noble --mirror http://mirror.example/ubuntu -f qcow2 -o noble.qcow2', what: 'Ubuntu on a Debian machine: its packages come from an Ubuntu mirror' },
  ],
  async run(args, ctx) {
    try {
      return await runBuild(args, ctx);
    } catch (err) {
      throw args.positionals.length === 0 ? asOneSpec(err) : err;
    }
  },
  render(r) {
    if ('check' in r) {
      return [
        `spec is valid and would build with ${r.backend}; digest ${r.specDigest}`,
        ...(r.packageIndex ? [`package names found in ${r.packageIndex}`] : []),
        ...r.notes.map((n) => `note: ${n}`),
        JSON.stringify(r.spec, null, 2),
      ].join('\n');
    }
    const rows = r.outputs.map((o) => [o.format, o.path, bytes(o.size), o.digest.slice(0, 16), o.inRepository ? 'yes' : 'no']);
    const stages = r.stages.map((s) => `${s.tag.slice(0, 12)} ${s.label}: ${r.cached ? 'in the repository' : s.waited ? 'reused (built by another build)' : s.hit ? 'cached' : `built in ${s.seconds.toFixed(1)} s`}`);
    return [summary(r), ...stages.map((l) => `stage ${l}`), table(rows, ['format', 'image', 'size', 'digest', 'in repository']), ...(r.logPath ? [`log: ${r.logPath}`] : [])].join('\n');
  },
};
export default command;
