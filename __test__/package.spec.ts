/**
 * The npm packages as a user gets them: scripts/pack.sh packs the main package and the
 * platform package of this machine (napi-rs style: the .node sits in osfarm-linux-x64-gnu,
 * which the main package names as an optional dependency); the tarballs are installed
 * into an empty project with npm --offline (no registry, no Rust on the PATH: the runtime
 * dependencies come as tarballs packed from this checkout's node_modules), and the
 * installed osfarm runs: `npx osfarm --version`, and a script that imports 'osfarm' and
 * makes a repository through the native module.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';

import test from 'ava';

import { Repository } from '../src/repo/index.js';
import { tempDir } from './helpers/tmp.js';

const ROOT = join(import.meta.dirname, '..');
const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string; dependencies: Record<string, string> };
const platform = `${process.platform}-${process.arch}-gnu`;
/** The platform packages not built for this machine: npm's cpu and libc, ELF's e_machine. */
const foreign: [string, string, string, number][] = [
  ['linux-arm64-gnu', 'arm64', 'glibc', 0xb7],
  ['linux-x64-musl', 'x64', 'musl', 0x3e],
];

/** Where node would find `name` from the package at `from` (a nested node_modules first). */
function installed(name: string, from: string): string {
  for (let dir = from; ; dir = dirname(dir)) {
    const candidate = join(dir, 'node_modules', name);
    if (existsSync(join(candidate, 'package.json'))) return candidate;
    if (dir === ROOT || dir === dirname(dir)) throw new Error(`${name} is not installed (npm ci)`);
  }
}

/** The runtime dependencies' closure, as installed in this checkout: their directories. */
function dependencyDirs(): string[] {
  const seen = new Map<string, string>();
  const visit = (deps: Record<string, string>, from: string) => {
    for (const name of Object.keys(deps)) {
      const dir = installed(name, from);
      if (seen.has(dir)) continue;
      seen.set(dir, name);
      const p = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as { dependencies?: Record<string, string> };
      visit(p.dependencies ?? {}, dir);
    }
  };
  visit(pkg.dependencies, ROOT);
  return [...seen.keys()];
}

const run = (cmd: string, args: string[], cwd: string, env: NodeJS.ProcessEnv = process.env) => execFileSync(cmd, args, { cwd, env, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });

test('the packed tarballs install offline into an empty project and run without Rust', async (t) => {
  const dir = tempDir(t, 'osfarm-test-pack-');
  const packs = join(dir, 'packs');
  run('bash', [join(ROOT, 'scripts', 'pack.sh'), packs], ROOT);
  const main = join(packs, `osfarm-${pkg.version}.tgz`);
  const native = join(packs, `osfarm-${platform}-${pkg.version}.tgz`);
  t.true(existsSync(main) && existsSync(native), readdirSync(packs).join(', '));

  // The main package: no native module of its own, the platform packages as optional
  // dependencies, the docs the README links to, the license, the man page.
  const manifest = JSON.parse(run('tar', ['-xzOf', main, 'package/package.json'], dir)) as Record<string, any>;
  t.deepEqual(Object.keys(manifest.optionalDependencies).sort(), ['osfarm-linux-arm64-gnu', 'osfarm-linux-x64-gnu', 'osfarm-linux-x64-musl']);
  t.deepEqual(readdirSync(join(ROOT, 'npm')).sort(), [platform, ...foreign.map(([other]) => other)].sort(), 'every platform package is checked below');
  t.true(Object.values(manifest.optionalDependencies).every((v) => v === pkg.version));
  t.is(manifest.scripts?.install, undefined, 'nothing is compiled at install');
  const files = run('tar', ['-tzf', main], dir).split('\n');
  t.false(files.some((f) => f.endsWith('.node')), 'the native module is in the platform package');
  for (const f of ['package/LICENSE', 'package/README.md', 'package/dist/man/osfarm.1', 'package/dist/cli/main.js']) t.true(files.includes(f), f);
  const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
  const linked = [...readme.matchAll(/\]\((docs\/[^)#]+)/g)].map((m) => `package/${m[1]}`);
  t.true(linked.length >= 5);
  for (const f of linked) t.true(files.includes(f), `README links ${f}`);
  const nativeFiles = run('tar', ['-tzf', native], dir).split('\n');
  t.true(nativeFiles.includes(`package/osfarm.${platform}.node`));
  t.true(nativeFiles.includes('package/LICENSE'));
  // The other platforms' packages, when scripts/build-platform.sh has cross-compiled their
  // modules (CI does not: docs/packaging.md): npm's os/cpu/libc fields, and the module an
  // ELF shared object for that machine, on that C library, with Node-API's entry point.
  const elsewhere = join(dir, 'elsewhere');
  mkdirSync(elsewhere);
  writeFileSync(join(elsewhere, 'package.json'), '{ "private": true }\n');
  for (const [other, cpu, libc, machine] of foreign) {
    const tarball = join(packs, `osfarm-${other}-${pkg.version}.tgz`);
    if (!existsSync(tarball)) {
      t.log(`${other}: not built here (scripts/build-platform.sh), not checked`);
      continue;
    }
    const fields = JSON.parse(run('tar', ['-xzOf', tarball, 'package/package.json'], dir)) as Record<string, unknown>;
    t.deepEqual([fields.os, fields.cpu, fields.libc], [['linux'], [cpu], [libc]], other);
    const module = join(dir, `osfarm.${other}.node`);
    writeFileSync(module, execFileSync('tar', ['-xzOf', tarball, `package/osfarm.${other}.node`], { maxBuffer: 64 << 20 }));
    const elf = readFileSync(module);
    t.is(elf.readUInt16LE(16), 3, `${other}: e_type ET_DYN`);
    t.is(elf.readUInt16LE(18), machine, `${other}: e_machine`);
    const needed = [...run('readelf', ['-d', module], dir).matchAll(/\(NEEDED\).*\[(.+)\]/g)].map((m) => m[1]);
    // musl's dynamic linker takes any libc.so* for itself, glibc's is libc.so.6.
    if (libc === 'musl') t.true(needed.includes('libc.so') && !needed.some((n) => /^(libc\.so\.6|ld-linux)/.test(n)), needed.join(' '));
    else t.true(needed.includes('libc.so.6'), needed.join(' '));
    t.regex(run('readelf', ['--dyn-syms', '-W', module], dir), / GLOBAL +DEFAULT +\d+ napi_register_module_v1$/m);
    // Those fields keep it off this machine (linux-x64-gnu): npm refuses to install it.
    const refused = spawnSync('npm', ['install', '--offline', '--dry-run', '--no-audit', '--no-fund', tarball], { cwd: elsewhere, encoding: 'utf8' });
    t.not(refused.status, 0, `${other}: npm installed it here`);
    t.regex(refused.stderr, /EBADPLATFORM/, refused.stderr);
  }

  // The runtime dependencies as tarballs, so that npm needs no registry.
  const deps = join(dir, 'deps');
  mkdirSync(deps);
  for (const d of dependencyDirs()) run('npm', ['pack', '--silent', '--ignore-scripts', '--pack-destination', deps], d); // a dependency's prepack scripts need its dev tools (bullmq's husky)

  const project = join(dir, 'project');
  mkdirSync(project);
  writeFileSync(join(project, 'package.json'), '{ "private": true, "type": "module" }\n');
  // No cargo or rustc: node's own directory and the system's.
  const env = { ...process.env, PATH: `${dirname(process.execPath)}:/usr/local/bin:/usr/bin:/bin` };
  const tarballs = [main, native, ...readdirSync(deps).map((f) => join(deps, f))];
  run('npm', ['install', '--offline', '--no-audit', '--no-fund', '--loglevel=error', ...tarballs], project, env);
  t.false(readdirSync(join(project, 'node_modules', 'osfarm')).some((f) => f.endsWith('.node')));
  for (const [other] of foreign) t.false(existsSync(join(project, 'node_modules', `osfarm-${other}`)), `${other}: another platform's package is skipped`);

  t.is(run('npx', ['--offline', 'osfarm', '--version'], project, env).trim(), `osfarm ${pkg.version}`);
  writeFileSync(
    join(project, 'use.mjs'),
    [
      "import { Repository, VERSION } from 'osfarm';",
      "import { writeFileSync } from 'node:fs';",
      "const image = process.argv[2] + '/a.img';",
      'writeFileSync(image, Buffer.alloc(3 * 4096, 7));',
      "const repo = Repository.init(process.argv[2] + '/repo');",
      "const entry = await repo.add(image, { name: 'a' });",
      'console.log(JSON.stringify({ version: VERSION, images: repo.list().map((i) => i.name), digest: entry.digest }));',
    ].join('\n'),
  );
  const out = JSON.parse(run('node', ['use.mjs', dir], project, env)) as { version: string; images: string[]; digest: string };
  t.is(out.version, pkg.version);
  t.deepEqual(out.images, ['a']);
  // The same digest as this checkout's own build gives.
  const here = Repository.init(join(dir, 'here'));
  t.is(out.digest, (await here.add(join(dir, 'a.img'))).digest);
  here.close();
});
