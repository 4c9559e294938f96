// Lazy boot (issue 11): `osfarm boot http://HOST:PORT/images/NAME` of a bootable disk built
// by `osfarm build` (bookworm minbase, its kernel, DHCP), served by `osfarm serve`'s pull
// handler on loopback, into a receiver that does not hold it. The boot reaches its marker
// while the origin is stopped and restarted under it, and the published image equals the
// origin's; a boot killed (SIGKILL, qemu with it) is resumed by `osfarm boot NAME` from the
// recorded origin; a wrong block from the origin fails the read and nothing is published.
// Two boots to the marker (each 40–120 s under TCG). The origin repository stays in
// $OSFARM_TEST_WORK, so a second run boots the disk the first one built.
// Needs root, the Debian archive, and scripts/apt-packages.txt's packages.
import test from 'ava';
import { execFileSync, spawn } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, readSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { Repository } from '../src/repo/index.js';
import { BOOT_MARKER } from '../src/spec/distros.js';
import type { HttpHandler } from '../src/transfer/http/serve.js';
import { readBootProfile } from '../src/transfer/lazy/profile.js';
import { buildWorkDir, cliAsync, resultOf } from './fixtures/build/harness.js';
import { serveRepo } from './helpers/origin.js';

const WORK = buildWorkDir();
const dir = join(WORK, 'lazy-boot');
const origin = join(dir, 'origin');
const vms = join(dir, 'vms');
/** A boot's budget: 40–120 s to the marker under TCG, several minutes at a load average of 20. */
const BOOT_S = 900;
const BOOT_ARGS = ['--firmware', 'bios', '--accel', 'tcg', '--until', BOOT_MARKER, '--timeout', String(BOOT_S)];
const CLI = join(import.meta.dirname, '..', 'src', 'cli', 'main.ts');

interface Disk {
  /** Its name in the origin repository (the build's: the spec's name and the output's extension). */
  name: string;
  digest: string;
  path: string;
  blockCount: number;
}

/** The disk in the origin repository, built once (kept between runs: the spec, and so its digest, stay the same). */
let built: Promise<Disk> | undefined;
function theDisk(): Promise<Disk> {
  built ??= (async () => {
    mkdirSync(dir, { recursive: true });
    const spec = join(dir, 'vm.yaml');
    writeFileSync(spec, `name: lazyvm\ndistribution: debian\nrelease: bookworm\narchitecture: amd64\ngroups: [minbase]\nkernel: true\nnetwork: dhcp\nsourceDateEpoch: 1700000000\noutputs: [disk]\n`);
    const run = await cliAsync(['--repo', origin, 'build', spec, '-d', WORK], undefined, { OSFARM_STAGES: process.env.OSFARM_STAGES ?? join(dir, 'stages') });
    const r = resultOf(run);
    if (run.status !== 0) throw new Error(`the build failed: ${JSON.stringify(r)}\n${run.stderr.slice(-2000)}`);
    const out = r.outputs.find((o: { format: string }) => o.format === 'disk');
    const repo = Repository.open(origin);
    try {
      const e = repo.resolve(out.digest);
      return { name: e.name!, digest: e.digest, path: e.path, blockCount: e.blockCount };
    } finally {
      repo.close();
    }
  })();
  return built;
}

/** A process and its descendants (each thread's children, from /proc). */
function processTree(pid: number): number[] {
  let kids: number[] = [];
  try {
    kids = readdirSync(`/proc/${pid}/task`).flatMap((tid) => readFileSync(`/proc/${pid}/task/${tid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number));
  } catch {
    /* it ended meanwhile */
  }
  return [pid, ...kids.flatMap(processTree)];
}

/** A new, empty receiving repository. */
function receiver(what: string): string {
  const p = join(dir, `receiver-${what}`);
  rmSync(p, { recursive: true, force: true });
  return p;
}

/** The receiver's published copy equals the origin's image, byte for byte (`cmp`: it fails on the first difference). */
function sameAsOrigin(recv: string, disk: Disk): void {
  const repo = Repository.open(recv);
  try {
    execFileSync('cmp', [repo.resolve(disk.digest).path, disk.path]);
  } finally {
    repo.close();
  }
}

test.serial('osfarm boot URL: the VM starts at once, boots to the marker while the origin is stopped and restarted under it; the published image equals the origin\'s and keeps the boot profile', async (t) => {
  t.timeout((BOOT_S + 1200) * 1000, 'the build, then a boot');
  const disk = await theDisk();
  const recv = receiver('restart');
  const o = await serveRepo(t, origin);
  let outage: Promise<void> | undefined;
  const t0 = Date.now();
  const run = await cliAsync(['--repo', recv, 'boot', `${o.url}/images/${disk.name}`, ...BOOT_ARGS], (line) => {
    // qemu has started (it read the partition table): the origin goes away for 8 s.
    if (line.type === 'started' && !outage) {
      outage = (async () => {
        await o.stop();
        await new Promise((r) => setTimeout(r, 8000));
        await serveRepo(t, origin, { port: o.port });
      })();
    }
  }, { OSFARM_WORK: vms });
  await outage;
  const r = resultOf(run);
  t.is(run.status, 0, `${JSON.stringify(r)}\n${run.stderr.slice(-3000)}`);
  t.true(run.lines.some((l) => l.type === 'lazy-ready'), 'a lazy-ready event');
  t.true(run.lines.some((l) => l.type === 'console'), 'the console as events');
  t.true(r.until.line.includes(BOOT_MARKER), 'the marker');
  t.is(r.mode, 'bios');
  // The outage cost retries, and the boot went on.
  t.true(r.lazy.retries > 0 || run.lines.some((l) => l.type === 'lazy-stalled'), 'the outage was seen');
  t.like(r.lazy, { digest: disk.digest, name: disk.name, alreadyPresent: false, profile: 'none' });
  t.true(r.lazyAtMarker.fetchedBlocks > 0 && r.lazyAtMarker.readBytes > 0);
  sameAsOrigin(recv, disk);
  const repo = Repository.open(recv);
  t.teardown(() => repo.close());
  await t.notThrowsAsync(repo.verify(disk.name));
  // The read order up to the marker is kept as the image's boot profile; the partition table comes first.
  const profile = readBootProfile(recv, disk.digest, disk.blockCount);
  t.is(profile?.runs[0]?.first, 0);
  const blocks = profile!.runs.reduce((n, x) => n + x.count, 0);
  t.true(blocks > 1000 && blocks < disk.blockCount / 4, `${blocks} blocks in the profile`);
  t.false(existsSync(join(recv, 'tmp', `${disk.digest}.origin.json`)));
  t.log(`marker after ${r.until.seconds} s (qemu's clock), ${(Date.now() - t0) / 1000} s in all; at the marker ${r.lazyAtMarker.fetchedBlocks} blocks fetched, the guest read ${r.lazyAtMarker.readBytes} bytes; profile ${blocks} of ${disk.blockCount} blocks; ${r.lazy.retries} retries`);
});

test.serial('osfarm boot URL killed with SIGKILL mid-boot (qemu with it): osfarm boot NAME goes on from the recorded origin, keeps what arrived, and boots to the marker', async (t) => {
  t.timeout((2 * BOOT_S + 1200) * 1000, 'the build, then a boot and a half');
  const disk = await theDisk();
  const recv = receiver('kill');
  // Slow at first (every range waits 300 ms), so the image is still arriving when the boot is killed.
  let slow = true;
  const o = await serveRepo(t, origin, { delayMs: () => (slow ? 300 : 0) });
  const args = ['--import', 'tsx', CLI, '--json', '--repo', recv, 'boot', `${o.url}/images/${disk.name}`, '--parallel', '2', ...BOOT_ARGS];
  const child = spawn(process.execPath, args, { cwd: join(import.meta.dirname, '..'), stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, OSFARM_WORK: vms } });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  await new Promise<void>((resolve, reject) => {
    child.stdout.on('data', () => {
      // 12 s into the boot: the partial's bitmap is saved every 5 s.
      if (out.includes('"type":"started"')) setTimeout(resolve, 12_000);
    });
    child.once('exit', () => reject(new Error(`the boot ended before it was killed: ${out.slice(-2000)}`)));
  });
  // osfarm and qemu together, as a machine that loses power would (qemu runs in a process group of its own).
  for (const pid of processTree(child.pid!)) process.kill(pid, 'SIGKILL');
  await new Promise((r) => child.once('exit', r));
  t.false(existsSync(join(recv, 'images', disk.digest)), 'not complete when killed');
  t.true(existsSync(join(recv, 'tmp', `${disk.digest}.origin.json`)), 'the origin is recorded');

  slow = false;
  const run = await cliAsync(['--repo', recv, 'boot', disk.name, ...BOOT_ARGS], undefined, { OSFARM_WORK: vms });
  const r = resultOf(run);
  t.is(run.status, 0, `${JSON.stringify(r)}\n${run.stderr.slice(-3000)}`);
  t.true(r.until.line.includes(BOOT_MARKER), 'the marker');
  t.like(r.lazy, { digest: disk.digest, name: disk.name });
  t.true(r.lazy.blocksResumed > 0, `${r.lazy.blocksResumed} blocks kept from the killed run`);
  sameAsOrigin(recv, disk);
  t.log(`resumed: ${r.lazy.blocksResumed} blocks kept, ${r.lazy.blocksFetched} fetched; marker after ${r.until.seconds} s`);
});

test.serial('a wrong block from the origin: the read fails, the boot stops with the bad block reported, and nothing is published', async (t) => {
  t.timeout(1500_000, 'the build, then a short run');
  const disk = await theDisk();
  const recv = receiver('liar');
  // An origin that flips one bit of block 0 (the partition table, which boot() reads first) in every range holding it.
  const at = 446 + 4; // the first partition entry's type byte
  const size = statSync(disk.path).size;
  const lie: HttpHandler = async (req, res) => {
    const m = req.url?.endsWith('/image') ? /^bytes=(\d+)-(\d+)$/.exec(req.headers.range ?? '') : null;
    if (!m || Number(m[1]) > at) return false;
    const [start, end] = [Number(m[1]), Number(m[2])];
    const fd = openSync(disk.path, 'r');
    const body = Buffer.alloc(end - start + 1);
    readSync(fd, body, 0, body.length, start);
    closeSync(fd);
    body[at - start]! ^= 0x01;
    res.writeHead(206, { 'content-type': 'application/octet-stream', 'content-range': `bytes ${start}-${end}/${size}`, 'content-length': body.length });
    res.end(body);
    return true;
  };
  const o = await serveRepo(t, origin, { before: lie });
  const run = await cliAsync(['--repo', recv, 'boot', `${o.url}/images/${disk.name}`, ...BOOT_ARGS], undefined, { OSFARM_WORK: vms });
  const r = resultOf(run);
  t.not(run.status, 0);
  t.like(
    run.lines.find((l) => l.type === 'lazy-bad-block'),
    { block: 0, origin: 'fetched' },
  );
  t.regex(JSON.stringify(r.error), /OSFARM_/);
  t.false(existsSync(join(recv, 'images', disk.digest)), 'nothing published');
  t.log(r.error?.message);
});
