/**
 * What the commands that read an image accept as one: a regular file, nothing else
 * (issue 17). A FIFO used to hang `index` and `compare` forever (deaf to SIGTERM), and a
 * character device was indexed as an empty image with the index written beside it. Each
 * command gets a FIFO and a character device (a /dev/zero of the test's own) and must
 * refuse both at once with OSFARM_INVALID_ARGUMENT, writing nothing. Also: numbers out of
 * range are refused instead of wrapping.
 */
import test from 'ava';
import { readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';

import { indexImageSync } from '../src/blocks/index.js';
import type { OsfarmError } from '../src/base/errors.js';
import { Repository } from '../src/repo/index.js';
import { pseudoRandom, sh, tempDir } from './helpers/tmp.js';

const CLI = join(import.meta.dirname, '..', 'src', 'cli', 'main.ts');

/** Runs the CLI with --json; a hang is killed after 60 s and shows as status -1. */
function run(args: string[]): { status: number; error?: { code: string; message: string } } {
  const r = spawnSync(process.execPath, ['--import', 'tsx', CLI, '--json', ...args], { encoding: 'utf8', timeout: 60_000, killSignal: 'SIGKILL' });
  const last = r.stdout.trim().split('\n').pop() ?? '';
  return { status: r.status ?? -1, ...(last.startsWith('{') ? (JSON.parse(last) as object) : {}) };
}

function specialFiles(dir: string): Record<string, string> {
  const fifo = join(dir, 'fifo');
  const zero = join(dir, 'zero');
  sh('mkfifo', [fifo]);
  sh('mknod', [zero, 'c', '1', '5']);
  return { FIFO: fifo, 'character device': zero };
}

const commands: Array<[string, (special: string, ctx: { image: string; repo: string }) => string[]]> = [
  ['index', (s) => ['index', s]],
  ['compare (A)', (s, c) => ['compare', s, c.image]],
  ['compare (B)', (s, c) => ['compare', c.image, s]],
  ['repo add', (s, c) => ['--repo', c.repo, 'repo', 'add', s]],
  ['plan', (s, c) => ['--repo', c.repo, 'plan', s]],
  ['push', (s, c) => ['--repo', c.repo, 'push', s, '127.0.0.1:9', '--insecure']],
];

for (const [name, args] of commands) {
  test(`${name} refuses a FIFO and a character device as its image, writing nothing`, (t) => {
    const dir = tempDir(t, 'osfarm-fuzz-paths-');
    const image = join(dir, 'a.img');
    writeFileSync(image, pseudoRandom(3 * 4096, 1));
    const repo = join(dir, 'repo');
    t.is(run(['--repo', repo, 'repo', 'init']).status, 0);
    for (const [kind, special] of Object.entries(specialFiles(dir))) {
      const r = run(args(special, { image, repo }));
      t.is(r.status, 2, `${kind}: exit status (-1 is a hang)`);
      t.is(r.error?.code, 'OSFARM_INVALID_ARGUMENT', `${kind}: ${r.error?.message}`);
      t.regex(r.error?.message ?? '', /not a regular file/, kind);
    }
    t.deepEqual(readdirSync(dir).sort(), ['a.img', 'fifo', 'repo', 'zero'], 'no index or partial written beside them');
    const list = run(['--repo', repo, 'repo', 'ls']);
    t.is(list.status, 0);
  });
}

test('Repository.assemble refuses a FIFO and a character device as the source of missing blocks', async (t) => {
  const dir = tempDir(t, 'osfarm-fuzz-paths-');
  const image = join(dir, 'a.img');
  writeFileSync(image, pseudoRandom(3 * 4096, 3));
  indexImageSync(image, { output: join(dir, 'a.osfi') });
  const repo = Repository.init(join(dir, 'repo'));
  for (const [kind, special] of Object.entries(specialFiles(dir))) {
    // The open of a FIFO used to block a worker thread forever: the promise never settled.
    const hang = new Promise<never>((_, reject) => setTimeout(() => reject(new Error('hung for 30 s')), 30_000).unref());
    const err = await t.throwsAsync(Promise.race([repo.assemble(join(dir, 'a.osfi'), { from: special }), hang]));
    t.is((err as OsfarmError).code, 'OSFARM_INVALID_ARGUMENT', `${kind}: ${err?.message}`);
    t.regex(err?.message ?? '', /not a regular file/, kind);
  }
  t.deepEqual(repo.list(), []);
  t.deepEqual(readdirSync(join(dir, 'repo', 'tmp')), [], 'no partial left');
});

test('an out-of-range block size is refused, not wrapped to 1661992960', (t) => {
  const dir = tempDir(t, 'osfarm-fuzz-paths-');
  const image = join(dir, 'a.img');
  writeFileSync(image, pseudoRandom(4096, 2));
  // 2^32 + 4096 used to wrap to a valid 4096 without a word.
  for (const args of [
    ['index', image, '--block-size', '99999999999999999999'],
    ['index', image, '--block-size', '4294971392'],
    ['pack', image, '-o', join(dir, 'never.tar'), '--block-size', '99999999999999999999'],
    ['--repo', join(dir, 'repo'), 'repo', 'init', '--block-size', '4294971392'],
  ]) {
    const r = run(args);
    t.is(r.status, 2, args.join(' '));
    t.is(r.error?.code, 'OSFARM_INVALID_ARGUMENT', r.error?.message);
    t.regex(r.error?.message ?? '', /block size/, args.join(' '));
  }
  t.deepEqual(readdirSync(dir), ['a.img'], 'no index, archive or repository written');
});
