/**
 * Every long call of the CLI stops on SIGTERM (issue 17: `index` and `compare` of a FIFO
 * ignored it and only SIGKILL stopped them). Each command gets an image of 512 MiB of data
 * (dropped from the page cache first, so the call lasts); the signal is sent as soon as the
 * process holds the image open, i.e. inside the long call. It must exit within seconds with
 * OSFARM_ABORTED and leave nothing behind: no index beside the image, no pack output, no
 * image or partial in the repository. A push to a peer that never answers stops the same way.
 */
import test from 'ava';
import { spawn } from 'node:child_process';
import { closeSync, existsSync, fsyncSync, linkSync, mkdirSync, openSync, readdirSync, readlinkSync, writeSync } from 'node:fs';
import { createServer, type Socket } from 'node:net';
import { join } from 'node:path';

import { Repository } from '../src/repo/index.js';
import { finished, pseudoRandom, sh, tempDir } from './helpers/tmp.js';

const CLI = join(import.meta.dirname, '..', 'src', 'cli', 'main.ts');
const MiB = 1 << 20;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Writes `mib` MiB of data in 64 MiB pieces (never the whole image in memory), synced. */
function writeImage(path: string, mib: number): void {
  const fd = openSync(path, 'w');
  for (let i = 0; i < mib / 64; i++) writeSync(fd, pseudoRandom(64 * MiB, 1000 + i));
  fsyncSync(fd);
  closeSync(fd);
}

/** True once `pid` holds `path` open (it is in the call that reads it). */
function holds(pid: number, path: string): boolean {
  try {
    return readdirSync(`/proc/${pid}/fd`).some((fd) => {
      try {
        return readlinkSync(`/proc/${pid}/fd/${fd}`) === path;
      } catch {
        return false;
      }
    });
  } catch {
    return false;
  }
}

/** Runs the CLI with --json, sends SIGTERM once `ready()` says so; its status, error and the seconds from the signal to its exit. */
async function terminated(args: string[], ready: (pid: number) => boolean): Promise<{ status: number; error?: { code: string; message: string }; seconds: number; signalled: boolean }> {
  const child = spawn(process.execPath, ['--import', 'tsx', CLI, '--json', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  const done = finished(child);
  let exited = false;
  void done.then(() => (exited = true));
  const deadline = Date.now() + 60_000;
  while (!exited && Date.now() < deadline && !ready(child.pid!)) await sleep(10);
  const signalled = !exited;
  const at = Date.now();
  child.kill('SIGTERM');
  const killer = setTimeout(() => child.kill('SIGKILL'), 30_000);
  const r = await done;
  clearTimeout(killer);
  const last = r.stdout.trim().split('\n').pop() ?? '';
  return { status: r.status, seconds: (Date.now() - at) / 1000, signalled, ...(last.startsWith('{') ? (JSON.parse(last) as object) : {}) };
}

test('index, compare, plan, repo add and pack stop on SIGTERM in the middle of a 512 MiB image, leaving nothing', async (t) => {
  const dir = tempDir(t, 'osfarm-signals-');
  const image = join(dir, 'a.img');
  writeImage(image, 512);
  const small = join(dir, 'small.img');
  writeImage(small, 64);
  const repo = join(dir, 'repo');
  Repository.init(repo);
  const tree = join(dir, 'tree');
  mkdirSync(tree);
  linkSync(image, join(tree, 'a.img'));
  // The command, and the path it reads the image by.
  const runs: Array<[string, string[], string]> = [
    ['index', ['index', image], image],
    ['compare', ['compare', image, small], image],
    ['plan', ['--repo', repo, 'plan', image], image],
    ['repo add', ['--repo', repo, 'repo', 'add', image], image],
    ['pack', ['pack', tree, '-o', join(dir, 'out.tar')], join(tree, 'a.img')],
  ];
  for (const [name, args, reads] of runs) {
    sh('dd', [`if=${image}`, 'iflag=nocache', 'count=0', 'status=none']); // out of the page cache: the call lasts
    const r = await terminated(args, (pid) => holds(pid, reads));
    t.true(r.signalled, `${name}: the signal came while it ran (it had exited with ${r.status})`);
    t.is(r.error?.code, 'OSFARM_ABORTED', `${name}: ${r.error?.message}`);
    t.is(r.status, 1, name);
    t.true(r.seconds < 10, `${name}: stopped ${r.seconds.toFixed(2)} s after SIGTERM`);
    t.log(`${name}: stopped ${r.seconds.toFixed(2)} s after SIGTERM`);
  }
  t.false(existsSync(`${image}.osfi`), 'no index written beside the image');
  t.false(existsSync(join(dir, 'out.tar')), 'no pack output');
  t.deepEqual(Repository.open(repo).list(), [], 'no image added');
  t.deepEqual(existsSync(join(repo, 'tmp')) ? readdirSync(join(repo, 'tmp')) : [], [], 'no partial left in the repository');
});

test('a push to a peer that never answers stops on SIGTERM', async (t) => {
  const dir = tempDir(t, 'osfarm-signals-');
  const image = join(dir, 'a.img');
  writeImage(image, 64);
  const sockets: Socket[] = [];
  const silent = createServer((s) => sockets.push(s));
  await new Promise<void>((res) => silent.listen(0, '127.0.0.1', res));
  t.teardown(() => {
    for (const s of sockets) s.destroy();
    silent.close();
  });
  const port = (silent.address() as { port: number }).port;
  const r = await terminated(['--repo', join(dir, 'repo'), 'push', image, `127.0.0.1:${port}`, '--insecure'], () => sockets.length > 0);
  t.true(r.signalled, `the signal came while it waited (it had exited with ${r.status})`);
  t.is(r.error?.code, 'OSFARM_ABORTED', r.error?.message);
  t.true(r.seconds < 10, `stopped ${r.seconds.toFixed(2)} s after SIGTERM`);
});
