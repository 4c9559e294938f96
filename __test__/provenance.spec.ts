/**
 * Provenance of real builds (docs/trust.md): two bookworm images built by `osfarm build` into
 * a signing repository — minbase, and minbase + python3 — then: their metadata travels
 * (a pushed and a pulled copy show what the origin shows), the SBOM lists every package
 * dpkg-query lists in the tree, and `images diff` lists python3 and its dependencies and
 * nothing else. Needs root and the Debian archive, like build-debian.spec.ts.
 */
import test, { type ExecutionContext } from 'ava';
import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, rmSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';

import { Repository } from '../src/repo/index.js';
import { createPullHandler, listenHttp } from '../src/transfer/http/serve.js';
import { pull } from '../src/transfer/http/pull.js';
import { push } from '../src/transfer/push/push.js';
import { Receiver } from '../src/transfer/push/receive.js';
import { generateKeys } from '../src/trust/keys.js';
import { buildWorkDir, type CliRun, cliAsync, resultOf } from './fixtures/build/harness.js';
import { cliJson, tempDir } from './helpers/tmp.js';

const WORK = buildWorkDir();
const out = join(WORK, 'provenance-test-out');
const origin = join(out, 'origin');
const EPOCH = '1700000000';

let started: Promise<{ key: string; minbase: CliRun; python: CliRun }> | undefined;
/** The origin repository (with a signing key) and its two builds, one after the other; started by the first test that needs them. */
function builds(): NonNullable<typeof started> {
  started ??= (async () => {
    rmSync(out, { recursive: true, force: true });
    mkdirSync(out, { recursive: true });
    Repository.init(origin);
    const key = generateKeys(origin).path;
    const build = (name: string, extra: string[]) =>
      cliAsync(['--repo', origin, 'build', '-t', 'debian-bookworm-amd64', '-d', WORK, '-o', join(out, `${name}.tar`), '--name', name, '-f', 'tar', '--source-date-epoch', EPOCH, ...extra]);
    const minbase = await build('minbase', []);
    const python = await build('python', ['-p', 'python3']);
    return { key, minbase, python };
  })();
  return started;
}

async function built(t: ExecutionContext): Promise<{ key: string; minbase: string; python: string }> {
  const b = await builds();
  for (const run of [b.minbase, b.python]) {
    if (run.status !== 0) t.log(JSON.stringify(resultOf(run)), run.stderr.slice(-2000));
    t.is(run.status, 0);
  }
  return { key: b.key, minbase: resultOf(b.minbase).outputs[0].digest, python: resultOf(b.python).outputs[0].digest };
}

/** `images show --json` without what belongs to the repository it is shown from: where the image is stored, when it arrived. */
function shown(repo: string, ref: string): Record<string, unknown> {
  const r = cliJson(['images', 'show', ref, '--repo', repo]);
  if (r.status !== 0) throw new Error(r.stderr);
  const { path: _path, added: _added, formats, ...rest } = r.result;
  return { ...rest, formats: formats.map(({ added: _a, ...f }: Record<string, unknown>) => f) };
}

/** Every package the tree's dpkg database lists (`dpkg-query -W`), as "name:arch version". */
function dpkgList(t: ExecutionContext, tar: string): { list: string[]; fields: Map<string, Record<string, string>> } {
  const tree = tempDir(t, 'osfarm-provenance-tree-');
  execFileSync('tar', ['-xf', tar, '-C', tree, '--wildcards', '*var/lib/dpkg/*']);
  const fmt = '${Package}\\t${Architecture}\\t${Version}\\t${Depends}\\t${Pre-Depends}\\t${Provides}\\n';
  const text = execFileSync('dpkg-query', [`--admindir=${join(tree, 'var/lib/dpkg')}`, '-W', '-f', fmt], { encoding: 'utf8' });
  const fields = new Map<string, Record<string, string>>();
  for (const line of text.split('\n').filter(Boolean)) {
    const [name, arch, version, depends, preDepends, provides] = line.split('\t') as string[];
    fields.set(name!, { name: name!, arch: arch!, version: version!, depends: `${depends}, ${preDepends}`, provides: provides! });
  }
  return { list: [...fields.values()].map((p) => `${p.name}:${p.arch} ${p.version}`).sort(), fields };
}

/** The installed packages `root` needs, itself included: Depends and Pre-Depends, alternatives and virtual packages resolved to what is installed. */
function closure(fields: Map<string, Record<string, string>>, root: string): Set<string> {
  const providers = new Map<string, string[]>();
  for (const p of fields.values()) {
    for (const v of p.provides!.split(',').map((s) => s.trim().split(' ')[0]!).filter(Boolean)) providers.set(v, [...(providers.get(v) ?? []), p.name!]);
  }
  const seen = new Set<string>();
  const todo = [root];
  while (todo.length) {
    const name = todo.pop()!;
    if (seen.has(name)) continue;
    seen.add(name);
    for (const clause of fields.get(name)!.depends!.split(',').map((c) => c.trim()).filter(Boolean)) {
      const alternatives = clause.split('|').map((a) => a.trim().split(/[\s:(]/)[0]!);
      const met = alternatives.flatMap((a) => (fields.has(a) ? [a] : (providers.get(a) ?? [])));
      if (met.length) todo.push(...met);
    }
  }
  return seen;
}

test.serial('a built image shows the same metadata and tags where it was built, pushed, and pulled (images show --json)', async (t) => {
  const b = await built(t);
  // A second tag (the origin re-signs the image with both): both travel.
  t.is(cliJson(['images', 'tag', 'minbase.tar', 'minbase:stable', '--repo', origin]).status, 0);
  const there = shown(origin, 'minbase.tar');
  t.deepEqual(there.tags, ['minbase.tar', 'minbase:stable']);
  t.truthy(there.built, 'the build time is recorded');
  t.true((there.stages as unknown[]).length >= 1);
  t.regex((there.buildLog as { tail: string }).tail, /osfarm: phase pack/);

  const pushedTo = join(tempDir(t), 'pushed');
  const receiver = new Receiver({ repo: pushedTo, insecure: true, trust: [b.key] });
  const addr = await receiver.listen('127.0.0.1', 0);
  t.teardown(() => receiver.close());
  const pushed = await push('minbase.tar', `127.0.0.1:${addr.port}`, { repo: origin, insecure: true });
  t.is(pushed.name, 'minbase.tar');
  t.deepEqual(shown(pushedTo, 'minbase.tar'), there);

  const { server } = await listenHttp({ host: '127.0.0.1', port: 0, handlers: [createPullHandler({ repo: origin })] });
  t.teardown(() => new Promise<void>((r) => (server.closeAllConnections(), server.close(() => r()))));
  const pulledTo = join(tempDir(t), 'pulled');
  const pulled = await pull(`http://127.0.0.1:${(server.address() as AddressInfo).port}/images/minbase:stable`, { repo: pulledTo, trust: [b.key] });
  t.truthy(pulled.signedBy);
  t.deepEqual(shown(pulledTo, 'minbase.tar'), there);
  // The SBOM is made from the signed metadata: the same document in all three.
  const sbom = (repo: string) => cliJson(['images', 'sbom', 'minbase.tar', '--repo', repo]).result.document;
  t.deepEqual(sbom(pulledTo), sbom(origin));
  t.deepEqual(sbom(pushedTo), sbom(origin));
});

test.serial('the SBOM (SPDX 2.3 and CycloneDX) lists every package dpkg-query -W lists in the tree, with its source', async (t) => {
  await built(t);
  const { list } = dpkgList(t, join(out, 'minbase.tar'));
  t.true(list.length > 50, `${list.length} packages`);
  const file = join(tempDir(t), 'minbase.spdx.json');
  const r = cliJson(['images', 'sbom', 'minbase.tar', '--repo', origin, '-o', file]);
  t.is(r.status, 0, r.stderr);
  const spdx = JSON.parse(readFileSync(file, 'utf8'));
  t.is(spdx.spdxVersion, 'SPDX-2.3');
  const packages = spdx.packages.filter((p: { SPDXID: string }) => p.SPDXID !== 'SPDXRef-Image');
  const arch = (p: { externalRefs: { referenceLocator: string }[] }) => new URL(p.externalRefs[0]!.referenceLocator.replace(/^pkg:/, 'pkg://')).searchParams.get('arch');
  t.deepEqual(packages.map((p: { name: string; versionInfo: string } & Parameters<typeof arch>[0]) => `${p.name}:${arch(p)} ${p.versionInfo}`).sort(), list);
  // Every package is contained in the image, and names its source package.
  t.is(spdx.relationships.filter((x: { relationshipType: string }) => x.relationshipType === 'CONTAINS').length, packages.length);
  t.regex(packages.find((p: { name: string }) => p.name === 'libc6').sourceInfo, /^built from source package glibc /);
  const cdx = cliJson(['images', 'sbom', 'minbase.tar', '--format', 'cyclonedx', '--repo', origin]).result.document;
  t.is(cdx.bomFormat, 'CycloneDX');
  t.deepEqual(cdx.components.map((c: { name: string; version: string; purl: string }) => `${c.name}:${new URL(c.purl.replace(/^pkg:/, 'pkg://')).searchParams.get('arch')} ${c.version}`).sort(), list);
});

test.serial('images diff minbase python: python3 and its dependencies added, nothing else', async (t) => {
  await built(t);
  const before = dpkgList(t, join(out, 'minbase.tar'));
  const after = dpkgList(t, join(out, 'python.tar'));
  const needed = closure(after.fields, 'python3');
  const expected = [...needed].filter((n) => !before.fields.has(n)).sort();
  t.true(expected.includes('python3') && expected.length > 5, expected.join(' '));

  const r = cliJson(['images', 'diff', 'minbase.tar', 'python.tar', '--repo', origin]);
  t.is(r.status, 0, r.stderr);
  t.deepEqual(r.result.added.map((p: { name: string }) => p.name), expected);
  t.deepEqual(r.result.removed, []);
  t.deepEqual(r.result.changed, []);
  t.is(r.result.unchanged, before.list.length);
  // The human form: one line per added package.
  const human = execFileSync(process.execPath, ['--import', 'tsx', join(import.meta.dirname, '..', 'src', 'cli', 'main.ts'), 'images', 'diff', 'minbase.tar', 'python.tar', '--repo', origin], { encoding: 'utf8' });
  t.regex(human, new RegExp(`${expected.length} added, 0 removed, 0 changed`));
  t.regex(human, /^\+ python3:amd64 \S+$/m);
});
