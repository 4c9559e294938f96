import test, { type ExecutionContext } from 'ava';
import { execFile } from 'node:child_process';
import { open, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';

import { native, type NbdEvent, type NbdFetchRequest, type NbdServer } from '../src/base/native.js';
import { Repository } from '../src/repo/index.js';
import { tempDir, writeBlocks } from './helpers/tmp.js';

const run = promisify(execFile);
const BS = 4096;
// The wanted image: blocks 1..12 are in the repository's "base" image, 100+ only at the
// origin (101 twice), 0 is all zeros.
const WANTED = [1, 100, 0, 2, 3, 101, 102, 0, 101, 4, 5, 103, 6, 7, 104, 105, 8, 9, 10, 106, 11, 12, 0, 107];

interface Lab {
  dir: string;
  repo: Repository;
  origin: string;
}

function lab(t: ExecutionContext): Lab {
  const dir = tempDir(t, 'osfarm-nbd-');
  const repo = Repository.init(join(dir, 'repo'));
  writeBlocks(join(dir, 'base.img'), [12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 50]);
  repo.addSync(join(dir, 'base.img'), { name: 'base' });
  const origin = join(dir, 'wanted.img');
  writeBlocks(origin, WANTED);
  return { dir, repo, origin };
}

/** Serves the wanted image, fetching missing blocks from the origin file; `corrupt` flips a byte of one block. */
async function serve(t: ExecutionContext, l: Lab, corrupt?: number): Promise<{ server: NbdServer; fetched: NbdFetchRequest[]; events: NbdEvent[] }> {
  const fetched: NbdFetchRequest[] = [];
  const events: NbdEvent[] = [];
  const origin = await open(l.origin, 'r');
  t.teardown(() => origin.close());
  let server: NbdServer | undefined;
  const fetch = (r: NbdFetchRequest) => {
    fetched.push(r);
    const buf = Buffer.alloc(r.length);
    origin.read(buf, 0, r.length, r.offset).then(
      () => {
        if (corrupt !== undefined && corrupt >= r.first && corrupt < r.first + r.count) buf[(corrupt - r.first) * BS] ^= 0x55;
        server!.supply(r.id, buf);
      },
      (err: Error) => server!.fail(r.id, err.message),
    );
  };
  const repo = native.RepositoryHandle.open(join(l.dir, 'repo'));
  server = await native.NbdServer.start(repo, l.origin, { socket: join(l.dir, 'nbd.sock'), exportName: 'wanted' }, fetch, (e) => events.push(e));
  t.teardown(() => server!.stop());
  return { server, fetched, events };
}

const uri = (s: NbdServer) => `nbd+unix:///wanted?socket=${s.socket}`;

test('qemu-img reads a partly present image through the binding: local blocks copied, the rest fetched by JS, then published', async (t) => {
  const l = lab(t);
  const { server, fetched, events } = await serve(t, l);
  t.is(server.size, WANTED.length * BS);
  const out = join(l.dir, 'out.raw');
  await run('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', uri(server), out]);
  t.deepEqual(await readFile(out), await readFile(l.origin));

  // Only blocks the repository lacks were fetched, each once (101's repeat came with it).
  const blocks = fetched.flatMap((r) => Array.from({ length: r.count }, (_, k) => r.first + k)).sort((a, b) => a - b);
  t.deepEqual(blocks, [1, 5, 6, 11, 14, 15, 19, 23]);
  t.true(fetched.every((r) => r.urgent));
  const stats = server.stats();
  t.is(stats.localBlocks, 12);
  t.is(stats.fetchedBlocks, 8);
  t.is(stats.haveBlocks, WANTED.length);
  t.deepEqual(events, []);
  t.deepEqual(server.missing(), []);
  t.true(server.profile().length > 0);

  const image = await server.publish({ tags: ['wanted'] });
  t.is(image.digest, server.digest);
  await l.repo.verify('wanted');
  t.deepEqual(await readFile(image.path), await readFile(l.origin));
});

test('a block the JS fetcher gets wrong fails the read with EIO, is reported and is not stored', async (t) => {
  const l = lab(t);
  const { server, events } = await serve(t, l, 6);
  const bad = await t.throwsAsync(run('qemu-io', ['-r', '-f', 'raw', '-c', `read ${6 * BS} ${BS}`, uri(server)]));
  t.regex((bad as Error & { stdout: string }).stdout, /Input\/output error/);
  t.is(events.length, 1);
  t.like(events[0], { kind: 'bad-block', block: 6, origin: 'fetched' });
  t.true(server.missing().some((r) => r.first <= 6 && 6 < r.first + r.count));
  // The prefetch path reports the same failure as an error with its code.
  const err = await t.throwsAsync(server.ensure(6, 1));
  t.is((err as Error & { code?: string }).code, 'OSFARM_DIGEST_MISMATCH');
  // Other blocks are served.
  await run('qemu-io', ['-r', '-f', 'raw', '-c', `read ${5 * BS} ${BS}`, uri(server)]);
  t.is(server.stats().badBlocks, 2);
});
