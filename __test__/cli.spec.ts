/**
 * The command line as a user meets it: the command table (every flag described, an
 * example per command), --help, bare `osfarm`, unknown flags and commands, shell
 * completion in real bash, zsh and fish, the man page, the --json event shape, a port in
 * use, a missing repository, a cache answer, compare by name, and the up-front checks of
 * a build with their suggestions and the failing tool's own error line. Builds here use a
 * local apt archive (an index, no packages), so they fail or finish in seconds.
 */
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { join } from 'node:path';

import test from 'ava';

import type { Command } from '../src/cli/command.js';
import { commandHelp, usageLines } from '../src/cli/help.js';
import { manPage } from '../src/cli/man.js';
import { parseFlags } from '../src/cli/parse.js';
import { GLOBAL_FLAGS, loadAll } from '../src/cli/table.js';
import { planStages } from '../src/builder/plan.js';
import { specFromFlags, specFromObject } from '../src/spec/index.js';
import { localArchive } from './helpers/apt-archive.js';
import { cli, cliJson, finished, tempDir, writeBlocks } from './helpers/tmp.js';

const CLI = join(import.meta.dirname, '..', 'src', 'cli', 'main.ts');

/** Every command path with its table entry: [['build'], cmd], [['repo', 'add'], cmd] … */
async function paths(): Promise<[string[], Command][]> {
  const out: [string[], Command][] = [];
  const visit = (c: Command, p: string[]) => {
    out.push([p, c]);
    for (const s of c.subcommands ?? []) visit(s, [...p, s.name]);
  };
  for (const c of await loadAll()) visit(c, [c.name]);
  return out;
}

test('the table: every command has a summary and usage, every runnable one an example, every flag a description; no flag clashes', async (t) => {
  const all = await paths();
  t.true(all.length >= 25, `${all.length} command paths`);
  for (const [p, c] of all) {
    const where = p.join(' ');
    t.regex(c.summary, /^[a-z].*[^.]$/, `${where}: summary`);
    if (c.subcommands) continue;
    t.true((c.examples ?? []).length > 0, `${where}: an example`);
    for (const e of c.examples ?? []) t.regex(e.command, new RegExp(`osfarm( -[-a-z]+( \\S+)?)* ${p.join(' ')}\\b`), `${where}: example runs it`);
    const shorts = new Map<string, string>();
    for (const [name, f] of Object.entries({ ...GLOBAL_FLAGS, ...c.options })) {
      t.true(f.description.length > 10, `${where} --${name}: description`);
      if (c.options?.[name] && GLOBAL_FLAGS[name]) t.fail(`${where} --${name} shadows a global flag`);
      if (f.short) {
        t.false(shorts.has(f.short), `${where}: -${f.short} is both --${shorts.get(f.short)} and --${name}`);
        shorts.set(f.short, name);
      }
    }
    // --quiet and --verbose on every command, parsed like any flag.
    const parsed = parseFlags(['--quiet', '-v'], { ...GLOBAL_FLAGS, ...c.options }, where, c.operands !== undefined);
    t.true(parsed.values.quiet === true && parsed.values.verbose === true, where);
  }
});

test('--help: usage lines name the command once, every flag with its description, the examples', async (t) => {
  for (const [p, c] of await paths()) {
    const text = commandHelp(c, p);
    for (const u of usageLines(c, p)) {
      t.true(u.startsWith(`osfarm ${p.join(' ')}`), u);
      t.false(u.includes(`${p[p.length - 1]} ${p[p.length - 1]}`), `no repeated word: ${u}`);
    }
    for (const f of Object.values(c.options ?? {})) t.true(text.includes(f.description), `${p.join(' ')}: ${f.description}`);
    for (const e of c.examples ?? []) t.true(text.includes(e.command));
  }
  // Through the CLI: the sub-command's own usage, with nothing garbled.
  const add = cli(['repo', 'add', '--help']);
  t.is(add.status, 0);
  t.regex(add.stdout, /^usage: osfarm repo add IMAGE\.\.\. \[--name N\] \[--meta JSON\]$/m);
  t.regex(add.stdout, /--meta JSON\s+metadata kept with the image/);
  t.regex(add.stdout, /examples:\n {2}osfarm repo add rootfs\.tar --name bookworm/);
  const gc = cli(['stages', 'gc', '-h']);
  t.regex(gc.stdout, /^usage: osfarm stages gc --max-size N \[--dry-run\] \[--stages DIR\]$/m);
  t.notRegex(gc.stdout, /usage: osfarm stages \(/);
  t.regex(cli(['help', 'serve']).stdout, /usage: osfarm serve --listen HOST:PORT/);
});

test('bare osfarm prints the usage and exits 2; --help exits 0; a command with sub-commands alone exits 2', (t) => {
  const bare = cli([]);
  t.is(bare.status, 2);
  t.is(bare.stdout, '');
  t.regex(bare.stderr, /^usage: osfarm <command> \[flags\]$/m);
  t.regex(bare.stderr, /^ {2}build {2,}build an image/m);
  const help = cli(['--help']);
  t.is(help.status, 0);
  t.is(help.stdout, bare.stderr);
  const repo = cli(['repo']);
  t.is(repo.status, 2);
  t.regex(repo.stderr, /^ {2}ls {2,}list the images .*\(also: list\)$/m);
  t.regex(cli(['--version']).stdout, /^osfarm \d/);
});

test('mistakes on the command line: a clear message, the closest names, exit 2', (t) => {
  const flag = cli(['push', '--nmae', 'x', 'a.tar', 'host:7070']);
  t.is(flag.status, 2);
  t.is(flag.stderr, "osfarm: unknown flag --nmae for osfarm push (did you mean --name?); osfarm push --help lists them (OSFARM_INVALID_ARGUMENT)\n");
  const short = cli(['index', '-x', 'a']);
  t.regex(short.stderr, /^osfarm: unknown flag -x for osfarm index; osfarm index --help lists them/);
  t.regex(cli(['biuld']).stderr, /^osfarm: unknown command 'biuld' \(did you mean build\?\); osfarm --help lists the commands/);
  t.regex(cli(['repo', 'lst']).stderr, /unknown command 'repo lst' \(did you mean ls or list\?\)/);
  t.regex(cli(['index']).stderr, /osfarm index takes 1 operand, got 0: osfarm index IMAGE/);
  t.regex(cli(['build', '--name']).stderr, /--name needs a value \(--name NAME\) in osfarm build/);
  t.regex(cli(['index', '--hash', 'sha265', 'a']).stderr, /--hash "sha265" is not one of sha1, sha256 \(did you mean sha256\?\)/);
  t.regex(cli(['repo', 'ls', '--json=yes']).stderr, /--json takes no value/);
  const json = cliJson(['push', '--nmae', 'x']);
  t.is(json.status, 2);
  t.is(json.result.type, 'error');
  t.is(json.result.error.code, 'OSFARM_INVALID_ARGUMENT');
  // An alias is the command: repo list is repo ls.
  const dir = tempDir(t);
  t.is(cli(['repo', 'init', join(dir, 'r')]).status, 0);
  t.deepEqual(cliJson(['--repo', join(dir, 'r'), 'repo', 'list']).result.images, []);
});

test('--json: every line has a type; the last is the result or the error', (t) => {
  const dir = tempDir(t);
  const repo = join(dir, 'repo');
  writeBlocks(join(dir, 'a.img'), [1, 2, 3]);
  t.is(cli(['repo', 'init', repo]).status, 0);
  const r = cli(['--json', '--repo', repo, 'repo', 'add', join(dir, 'a.img'), '--name', 'a']);
  const lines = r.stdout.trim().split('\n').map((l) => JSON.parse(l) as { type: string; [k: string]: unknown });
  t.deepEqual(lines.map((l) => l.type), ['added', 'result']);
  t.is((lines[1]!.result as { name: string }[])[0]!.name, 'a');
  const bad = JSON.parse(cli(['--json', '--repo', repo, 'repo', 'show', 'nothing']).stdout) as { type: string; error: { code: string } };
  t.is(bad.type, 'error');
  t.is(bad.error.code, 'OSFARM_NOT_FOUND');
});

test('compare takes images of the repository by name, like push and images', (t) => {
  const dir = tempDir(t);
  const env = { OSFARM_REPO: join(dir, 'repo') };
  writeBlocks(join(dir, 'a.img'), [1, 2, 3, 4]);
  writeBlocks(join(dir, 'b.img'), [1, 2, 5, 6]);
  t.is(cli(['repo', 'init'], env).status, 0);
  t.is(cli(['repo', 'add', join(dir, 'a.img'), '--name', 'alpha'], env).status, 0);
  t.is(cli(['repo', 'add', join(dir, 'b.img'), '--name', 'beta'], env).status, 0);
  const r = cliJson(['compare', 'alpha', 'beta'], env);
  t.is(r.status, 0, r.stderr);
  t.is(r.result.a.shareInOther, 0.5);
  t.is(r.result.aPath, 'alpha (repository)');
  t.regex(cli(['compare', 'alpha', join(dir, 'b.img')], env).stdout, /alpha \(repository\).*50\.0 % in B/);
  const missing = cliJson(['compare', 'alpha', 'gamma'], env);
  t.is(missing.result.error.code, 'OSFARM_NOT_FOUND');
  t.regex(missing.result.error.message, /gamma/);
});

test('shell completion: bash, zsh and fish complete commands, sub-commands, flags and their values', async (t) => {
  const dir = tempDir(t);
  const script = (shell: string) => {
    const r = cli(['completion', shell]);
    t.is(r.status, 0, r.stderr);
    const file = join(dir, shell === 'zsh' ? '_osfarm' : `osfarm.${shell}`);
    writeFileSync(file, r.stdout);
    return file;
  };
  // bash: the completion function with the words before the cursor.
  const bashFile = script('bash');
  const bash = (words: string[]) =>
    execFileSync('bash', ['-c', `source ${bashFile}; COMP_WORDS=(${words.map((w) => `'${w}'`).join(' ')}); COMP_CWORD=${words.length - 1}; _osfarm; printf '%s\\n' "\${COMPREPLY[@]}"`], { encoding: 'utf8' }).trim().split('\n');
  t.deepEqual(bash(['osfarm', 'bu']), ['build']);
  t.deepEqual(bash(['osfarm', 'repo', 're']), ['rebuild']);
  t.deepEqual(bash(['osfarm', '--repo', 'r', 'build', '--fo']), ['--format']);
  t.deepEqual(bash(['osfarm', 'index', '--hash', '']), ['sha1', 'sha256']);
  t.true(bash(['osfarm', 'build', '--cow', '']).includes('overlayfs'));
  t.true(bash(['osfarm', 'stages', 'gc', '--']).includes('--dry-run'));
  // fish: its own `complete -C`.
  const fishFile = script('fish');
  const fish = (line: string) => execFileSync('fish', ['-c', `source ${fishFile}; complete -C '${line}'`], { encoding: 'utf8' }).trim().split('\n');
  t.deepEqual(fish('osfarm bu'), ['build\tbuild an image in a chroot from a spec (YAML, JSON, XML) or genfs-style flags']);
  t.true(fish('osfarm repo ').some((l) => l.startsWith('verify\t')));
  t.deepEqual(fish('osfarm index --hash ').map((l) => l.split('\t')[0]), ['sha1', 'sha256']);
  t.true(fish('osfarm build --for').some((l) => l.startsWith('--format\t')));
  // zsh: an interactive zsh on a pseudo-terminal; a tab completes the word, and the line
  // that runs shows the completed words.
  const zshFile = script('zsh');
  const driver = join(dir, 'drive.zsh');
  writeFileSync(
    driver,
    [
      'zmodload zsh/zpty',
      'zpty z zsh -f -i',
      `zpty -w z 'autoload -U compinit; compinit -u -D; source ${zshFile}; osfarm () { print -r -- "ARGS:$*:END" }'`,
      "zpty -n -w z $'osfarm repo reb\\t --json\\n'",
      "zpty -n -w z $'osfarm index --hash sha2\\t\\n'",
      "zpty -n -w z $'osfarm bui\\t--fo\\t\\n'",
      "zpty -w z 'print -r ALL''DONE'",
      "out=''",
      'integer n=0',
      'while (( n++ < 400 )); do zpty -r -t z line && out+=$line; [[ $out == *$\'\\nALLDONE\'* ]] && break; sleep 0.05; done',
      "print -r -- $out",
      'zpty -d z',
    ].join('\n'),
  );
  const zsh = execFileSync('zsh', ['-f', driver], { encoding: 'utf8', timeout: 60_000 });
  // (The function's own definition is echoed too: only the lines that ran, without a $.)
  t.deepEqual(zsh.match(/ARGS:[^:$\n]*:END/g), ['ARGS:repo rebuild --json:END', 'ARGS:index --hash sha256:END', 'ARGS:build --format:END']);
});

test('the man page: every command and flag of the table, rendered by man without a warning, the same as the built one', async (t) => {
  const commands = await loadAll();
  const page = manPage(commands);
  for (const [p, c] of await paths()) {
    t.true(page.includes(`.SS ${p.join(' ')}`), p.join(' '));
    for (const n of Object.keys(c.options ?? {})) t.true(page.includes(`\\-\\-${n.replace(/-/g, '\\-')}`), `${p.join(' ')} --${n}`);
  }
  const dir = tempDir(t);
  writeFileSync(join(dir, 'osfarm.1'), page);
  const shown = spawnSync('man', ['-l', join(dir, 'osfarm.1')], { encoding: 'utf8', env: { ...process.env, MANWIDTH: '100', MANPAGER: 'cat', PAGER: 'cat' } });
  t.is(shown.status, 0);
  t.is(shown.stderr, '', 'no troff warning');
  t.regex(shown.stdout, /osfarm build -t DIST-RELEASE\[-ARCH\] \[-g GROUP,…\]/);
  t.is(cli(['man']).stdout, page);
  // The page the build ships (npm run build:ts writes it) is this one: no drift.
  const built = join(import.meta.dirname, '..', 'dist', 'man', 'osfarm.1');
  if (existsSync(built)) t.is(readFileSync(built, 'utf8'), page, 'dist/man/osfarm.1 is stale: npm run build:ts');
});

/** A TCP port something else listens on. */
async function takenPort(t: { teardown: (fn: () => void) => void }): Promise<number> {
  const s: Server = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  t.teardown(() => s.close());
  return (s.address() as { port: number }).port;
}

test('a port in use: a clear error before anything is created, for receive and serve', async (t) => {
  const dir = tempDir(t);
  const port = await takenPort(t);
  for (const args of [['receive', '--insecure'], ['serve', '--insecure', '--token-file', join(dir, 'token')]]) {
    const repo = join(dir, `repo-${args[0]}`);
    const r = cliJson(['--repo', repo, ...args, '--listen', `127.0.0.1:${port}`]);
    t.is(r.status, 1, args[0]);
    t.is(r.result.error.code, 'OSFARM_ADDRESS_IN_USE');
    t.is(r.result.error.message, `127.0.0.1:${port} is already in use (another osfarm serve or receive?): stop it, or give another port with --listen`);
    t.false(existsSync(repo), `${args[0]} created no repository`);
  }
});

/** Starts a long-running command, waits for `ready` on its stderr and stdout, stops it with SIGINT; its whole output. */
async function startStop(args: string[], ready: RegExp): Promise<{ status: number; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, ['--import', 'tsx', CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  const done = finished(child);
  let seen = '';
  let stopping = false;
  // Once: output after the stop (the result) must not send a second SIGINT.
  const watch = (d: Buffer) => {
    seen += d.toString();
    if (!stopping && ready.test(seen)) {
      stopping = true;
      child.kill('SIGINT');
    }
  };
  child.stderr!.on('data', watch);
  child.stdout!.on('data', watch);
  return done;
}

test('a missing repository: serve, receive and build create it and say so; serve names its token file on every start', async (t) => {
  const dir = tempDir(t);
  const token = join(dir, 'token');
  const first = await startStop(['--repo', join(dir, 'served'), 'serve', '--listen', '127.0.0.1:0', '--token-file', token, '--insecure'], /serving/);
  t.is(first.status, 0, first.stderr);
  t.regex(first.stderr, new RegExp(`^created repository ${join(dir, 'served')} \\(it did not exist\\)$`, 'm'));
  t.regex(first.stderr, new RegExp(`^web token \\(new, kept in ${token}, mode 0600\\): \\S{20,}$`, 'm'));
  t.true(existsSync(join(dir, 'served', 'osfarm-repo.json')));
  const again = await startStop(['--repo', join(dir, 'served'), 'serve', '--listen', '127.0.0.1:0', '--token-file', token, '--insecure'], /serving/);
  t.notRegex(again.stderr, /created repository/);
  t.regex(again.stderr, new RegExp(`^web token: in ${token}$`, 'm'));
  t.false(again.stderr.includes(readFileSync(token, 'utf8').trim()), 'the token itself only once');

  const received = await startStop(['--repo', join(dir, 'received'), 'receive', '--listen', '127.0.0.1:0', '--insecure'], /receiving into/);
  t.regex(received.stderr, new RegExp(`^created repository ${join(dir, 'received')} \\(it did not exist\\)$`, 'm'));
  t.true(existsSync(join(dir, 'received', 'osfarm-repo.json')));
  // --quiet: none of that on stderr (the --json events still say it).
  const quiet = await startStop(['--repo', join(dir, 'quiet'), '-q', '--json', 'receive', '--listen', '127.0.0.1:0', '--insecure'], /"type":"listening"/);
  t.is(quiet.stderr, '');
  t.regex(quiet.stdout, /^\{"type":"repository-created","path":"[^"]*quiet"\}$/m);
});

/** A build of nothing from a local archive with no packages: mmdebstrap runs, in seconds. */
function emptyBuild(dir: string) {
  const mirror = localArchive(join(dir, 'mirror'), ['hello']);
  return cli(['--repo', join(dir, 'repo'), 'build', '-t', 'debian-bookworm-amd64', '--mirror', mirror, '--no-gpg-check', '-d', join(dir, 'work'), '--source-date-epoch', '1700000000']);
}

const root = process.getuid?.() === 0;

(root ? test : test.skip)('a build creates a missing repository; a request the repository holds is answered from it and says so', (t) => {
  const dir = tempDir(t);
  const first = emptyBuild(dir);
  t.is(first.status, 0, first.stderr);
  t.regex(first.stderr, new RegExp(`^created repository ${join(dir, 'repo')} \\(it did not exist\\)$`, 'm'));
  t.regex(first.stdout, /^built debian-bookworm-amd64 in [\d.]+ s: 1 of 1 stage\(s\) made by mmdebstrap \(spec digest [0-9a-f]{16}\)$/m);
  const second = emptyBuild(dir);
  t.is(second.status, 0, second.stderr);
  const digest = cliJson(['--repo', join(dir, 'repo'), 'repo', 'ls']).result.images[0].digest as string;
  t.regex(second.stdout, new RegExp(`^debian-bookworm-amd64: answered from the repository: ${digest.slice(0, 16)} \\(spec digest [0-9a-f]{16}\\); nothing built`, 'm'));
  t.notRegex(second.stdout, /built debian-bookworm-amd64|with mmdebstrap/);
  t.notRegex(second.stderr, /created repository|\] bootstrap/);
});

(root ? test : test.skip)('packing squashfs shows progress: events in items written', (t) => {
  const dir = tempDir(t);
  const r = spawnSync(process.execPath, ['--import', 'tsx', CLI, '--json', '--repo', join(dir, 'repo'), 'build', '-t', 'debian-bookworm-amd64', '--mirror', localArchive(join(dir, 'mirror'), ['hello']), '--no-gpg-check', '-d', join(dir, 'work'), '-f', 'squashfs', '--no-repo', '-o', join(dir, 'x.squashfs')], { encoding: 'utf8' });
  t.is(r.status, 0, r.stderr);
  const events = r.stdout.trim().split('\n').map((l) => JSON.parse(l) as Record<string, any>);
  const packing = events.filter((e) => e.type === 'progress' && e.phase === 'pack' && e.detail === 'squashfs');
  t.true(packing.length > 0, 'progress while mksquashfs runs');
  t.true(packing.every((e) => e.unit === 'items' && e.done <= e.total));
  t.is(packing[packing.length - 1]!.done, packing[packing.length - 1]!.total);
  t.false(readFileSync(join(dir, 'x.squashfs.build.log'), 'utf8').includes('%'), 'the bar is not in the log');
});

test('up-front checks: release, distribution, packages and sources refused at once, with the closest names', (t) => {
  const dir = tempDir(t);
  const check = (args: string[], env: NodeJS.ProcessEnv = {}) => cliJson(['build', '--check', '-d', join(dir, 'work'), ...args], { OSFARM_MIRROR: '', ...env });
  const pkg = check(['-t', 'debian-bookworm-amd64', '-p', 'jqq,less']);
  t.is(pkg.status, 1);
  t.is(pkg.result.error.code, 'OSFARM_BAD_SPEC');
  t.regex(pkg.result.error.message, /^spec\.packages\[0\]: "jqq" is not a package of debian bookworm \(amd64\) \(did you mean jq\b[^)]*\?\); looked up in apt's lists on this machine$/);
  const release = check(['-t', 'debian-bookwrm-amd64', '-p', 'jq']);
  t.regex(release.result.error.message, /^spec\.release: "bookwrm" is not a release of debian \(did you mean bookworm\?\); the archive serves .*\bbookworm\b/);
  t.regex(check(['-t', 'debain-bookworm']).result.error.message, /^spec\.distribution: "debain" is not a distribution osfarm builds \(did you mean debian\?\)/);
  t.regex(check(['-t', 'debian-12']).result.error.message, /^spec\.release: "12" is the version number of bookworm: give the codename, bookworm$/);
  t.regex(check(['-t', 'ubuntu-noble']).result.error.message, /^spec\.mirrors: this machine's apt sources serve debian, not ubuntu: give ubuntu's archive with --mirror URL/);
  t.regex(check(['-t', 'fedora-41', '--no-gpg-check']).result.error.message, /^spec\.mirrors: fedora needs its repositories: give their base URLs in mirrors, --mirror or \$OSFARM_MIRROR/);
  t.regex(check(['-t', 'debian-stretch']).result.error.message, /^spec\.release: stretch: end of life since \d{4}-\d\d-\d\d, so the main archive does not have it: give an archive that does with --mirror URL$/);
  // A spec file: the same checks, paths into the file's fields.
  writeFileSync(join(dir, 'app.yaml'), 'distribution: debian\nrelease: bookworm\npackages: [less, vimm]\n');
  t.regex(cliJson(['build', join(dir, 'app.yaml'), '-d', join(dir, 'work'), '--no-repo']).result.error.message, /^spec\.packages\[1\]: "vimm" is not a package .*did you mean vim\b/);
  // What passes says where the names were found.
  const ok = check(['-t', 'debian-bookworm-amd64', '-p', 'jq,less']);
  t.is(ok.status, 0, JSON.stringify(ok.result));
  t.is(ok.result.backend, 'mmdebstrap');
  t.is(ok.result.packageIndex, "apt's lists on this machine");
  t.false(existsSync(join(dir, 'repo')));
});

(root ? test : test.skip)("when the tool still fails, its own error line is in osfarm's message", (t) => {
  const dir = tempDir(t);
  // The index has hello 1.0-1: the name passes the up-front check, the version only apt
  // checks. In the core, so mmdebstrap is the tool that fails.
  const mirror = localArchive(join(dir, 'mirror'), ['hello']);
  writeFileSync(join(dir, 'core.yaml'), `distribution: debian\nrelease: bookworm\npackages: [hello=9.9]\nmirrors: ["${mirror}"]\ngpgCheck: false\n`);
  const r = cliJson(['build', join(dir, 'core.yaml'), '-d', join(dir, 'work'), '--no-repo', '-o', join(dir, 'x.tar')]);
  t.is(r.status, 1);
  t.is(r.result.error.code, 'OSFARM_BUILD_FAILED');
  t.regex(r.result.error.message, /failed \(exit \d+\): E: Version '9\.9' for 'hello' was not found; see the build log/);
});

test("flag builds: what the flags add is a stage above the core, so builds differing in one package share it", (t) => {
  const core = (pkgs: string[]) => {
    const raw = specFromFlags(undefined, { target: 'debian-bookworm-amd64', fields: { groups: ['minbase'], packages: pkgs } });
    const spec = specFromObject(raw);
    return planStages(spec, { driver: 'mmdebstrap', driverVersion: 'mmdebstrap 1', osfarmVersion: '0', sourceDateEpoch: null, hostSources: 'h' });
  };
  const jq = core(['jq']);
  const less = core(['less']);
  t.is(jq.length, 2);
  t.is(jq[0]!.tag, less[0]!.tag, 'one core');
  t.not(jq[1]!.tag, less[1]!.tag);
  t.deepEqual(jq[0]!.spec.groups, ['minbase']);
  t.deepEqual(jq[0]!.spec.packages, []);
  t.deepEqual(jq[1]!.spec.packages, ['jq']);
  // No additions: one stage, as before.
  t.is(core([]).length, 1);
  t.is(core([])[0]!.tag, jq[0]!.tag, 'and the same core as a plain minbase');
});
