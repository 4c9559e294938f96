import test from 'ava';
import { chmodSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { cli, cliJson, tempDir, writeBlocks } from './helpers/tmp.js';

test('repo init, add, ls, show, plan, verify and rm from the CLI, human and --json', (t) => {
  const dir = tempDir(t);
  const repo = join(dir, 'repo');
  const env = { OSFARM_REPO: repo };
  writeBlocks(join(dir, 'a.img'), [1, 2, 3, 0, 4, 5, 6, 7]);
  // b: two blocks of a, a repeat of its own new block, a zero block, then two more new ones.
  writeBlocks(join(dir, 'b.img'), [1, 2, 90, 90, 0, 91, 92, 7]);

  const init = cliJson(['repo', 'init', '--block-size', '4K'], env);
  t.is(init.status, 0, init.stderr);
  t.deepEqual(init.result, { path: repo, hash: 'sha1', blockSize: 4096, detectCollisions: false });
  const again = cliJson(['repo', 'init'], env);
  t.not(again.status, 0, 'a second init of the same directory is refused');
  t.regex(again.result.error.message, /already an osfarm repository/);

  const added = cliJson(['repo', 'add', join(dir, 'a.img'), '--name', 'alpha', '--meta', '{"suite":"bookworm"}'], env);
  t.is(added.status, 0, added.stderr);
  t.is(added.result[0].name, 'alpha');
  t.deepEqual(added.result[0].meta, { suite: 'bookworm' });

  const ls = cliJson(['repo', 'ls'], env);
  t.is(ls.result.images.length, 1);
  t.is(ls.result.stats.distinctBlocks, 7);
  t.regex(cli(['repo', 'ls'], env).stdout, /alpha\s+raw\s+32\.0 KiB/);

  const plan = cliJson(['plan', join(dir, 'b.img'), '--runs'], env);
  t.is(plan.status, 0, plan.stderr);
  t.is(plan.result.presentBlocks, 3);
  t.is(plan.result.zeroBlocks, 1);
  t.is(plan.result.duplicateBlocks, 1);
  t.is(plan.result.missingBlocks, 3);
  t.deepEqual(plan.result.missingRuns, [
    { first: 2, count: 1 },
    { first: 5, count: 2 },
  ]);
  t.regex(cli(['plan', join(dir, 'b.img')], env).stdout, /missing\s+3 blocks .* in 2 runs/);

  t.is(cliJson(['repo', 'show', 'alpha'], env).result.size, 8 * 4096);
  t.deepEqual(cliJson(['repo', 'verify'], env).result, { verified: 1, failed: [] });
  // A block damaged on disk: that image fails, the command says so and exits 1.
  const held = cliJson(['repo', 'show', 'alpha'], env).result;
  const data = readFileSync(held.path);
  data[5000] ^= 0xff;
  chmodSync(held.path, 0o644);
  writeFileSync(held.path, data);
  const damaged = cliJson(['repo', 'verify', 'alpha'], env);
  t.is(damaged.status, 1);
  t.is(damaged.result.verified, 0);
  t.is(damaged.result.failed[0].code, 'OSFARM_DIGEST_MISMATCH');
  data[5000] ^= 0xff;
  writeFileSync(held.path, data);
  const rm = cliJson(['repo', 'rm', 'alpha'], env);
  t.is(rm.status, 0, rm.stderr);
  t.is(cliJson(['repo', 'ls'], env).result.images.length, 0);
  t.is(cliJson(['plan', join(dir, 'a.img')], env).result.missingBlocks, 7);
});

test('repo errors: a missing repository, an unknown image and bad arguments say what to do', (t) => {
  const dir = tempDir(t);
  const env = { OSFARM_REPO: join(dir, 'none') };
  const missing = cliJson(['repo', 'ls'], env);
  t.is(missing.status, 1);
  t.is(missing.result.error.code, 'OSFARM_BAD_REPOSITORY');
  t.regex(missing.result.error.message, /repo init/);
  t.is(cli(['repo', 'init', join(dir, 'r')]).status, 0);
  const unknown = cliJson(['--repo', join(dir, 'r'), 'repo', 'rm', 'nothing-here'], env);
  t.is(unknown.result.error.code, 'OSFARM_NOT_FOUND');
  t.is(cli(['--repo', join(dir, 'r'), 'repo', 'add']).status, 2, 'usage errors exit 2');
  t.is(cli(['--repo', join(dir, 'r'), 'repo', 'add', 'x', '--meta', '{bad']).status, 2);
  t.is(cli(['--repo', join(dir, 'r'), 'plan']).status, 2);
});
