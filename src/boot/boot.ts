/**
 * `boot()`: starts an image under qemu and hands back the running VM: its serial console
 * (a byte stream, and "wait for a line matching X"), SSH over a forwarded loopback port,
 * and stop(). The image is never written: the guest writes to a qcow2 overlay in a
 * directory of its own (kept with `keep`). KVM when it can run the guest, else TCG with a
 * warning; docs/boot.md describes the rule.
 */
import { createWriteStream, existsSync, type WriteStream } from 'node:fs';
import { copyFile, mkdir, mkdtemp, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { availableParallelism } from 'node:os';
import { join, resolve } from 'node:path';
import type { Readable } from 'node:stream';

import { defaultWorkDir, repositoryPath } from '../base/env.js';
import { abortError, invalidArgument, OsfarmError, throwIfAborted } from '../base/errors.js';
import { buildMeta, openIfExists } from '../images/lookup.js';
import { type Architecture, hostArchitecture } from '../spec/distros.js';
import { Console } from './console.js';
import { type DiskLayout, type DiskSource, parseNbdUri, readLayout, sniffFile } from './disk.js';
import { kernelBoot, type KernelBoot } from './kernel.js';
import { type Accel, type BootMode, type Firmware, findUefi, kvmUnavailable, MACHINES, type Machine, parseAccel, parseFirmware, requireTool } from './machine.js';
import { createOverlay, describeExit, type QemuExit, qemuArgs, type QemuPlan, QemuRun } from './qemu.js';
import { type ExecResult, sshArgs, sshExec } from './ssh.js';

export interface BootOptions {
  /** The repository (its directory) an image name or digest is looked up in (default $OSFARM_REPO, else ./osfarm-repo). */
  repo?: string;
  /** The guest's architecture when neither the repository nor the disk says (default: this host's). */
  arch?: Architecture;
  /** Default: the image's own (its spec's firmware; hybrid boots UEFI), else UEFI when the disk has an EFI system partition, else BIOS. */
  firmware?: Firmware;
  /** Start the image's kernel and initramfs directly (-kernel/-initrd) instead of its firmware and boot loader. */
  kernelBoot?: boolean;
  /** Default 1024. */
  memoryMiB?: number;
  /** Default 2 (at most this host's CPUs). */
  cpus?: number;
  /** The loopback port forwarded to the guest's port 22; default a free one. */
  sshPort?: number;
  /** The private key `exec` logs in with; default ssh's own. */
  sshKey?: string;
  /** Default root. */
  sshUser?: string;
  /** Default auto: KVM if it can run the guest, else TCG. */
  accel?: Accel;
  /** With accel auto: KVM has this long to show the first console byte (default 10 s; TCG shows one in 0.5–8 s). */
  kvmProbeMs?: number;
  /** Keep the overlay, the firmware variables and the console log in this directory (new or empty). */
  keep?: string;
  /** Where the temporary directory goes (default: <$OSFARM_WORK or ~/.cache/osfarm>/boot). */
  workDir?: string;
  /** Where UEFI firmware is looked for (default: where Debian's ovmf / qemu-efi-aarch64 put it). */
  firmwareDirs?: string[];
  /** Stops the VM (and a boot still starting) when it fires. */
  signal?: AbortSignal;
  /** Hears each warning as it happens (they are also in `info.warnings`). */
  onWarning?: (message: string) => void;
}

export interface BootInfo {
  /** What was booted: the file, the NBD URI, or the repository image's name or digest. */
  image: string;
  /** The disk under the overlay (a file path or an NBD URI) and its format. */
  disk: DiskSource;
  arch: Architecture;
  mode: BootMode;
  accel: 'kvm' | 'tcg';
  cpus: number;
  memoryMiB: number;
  sshPort: number;
  /** The VM's directory (overlay.qcow2, console.log, boot.json); removed by stop() unless kept. */
  dir: string;
  overlay: string;
  kept: boolean;
  kernel: Omit<KernelBoot, 'kernel' | 'initrd'> | null;
  warnings: string[];
  /** qemu's command line. */
  argv: string[];
}

export interface WaitResult {
  line: string;
  /** Seconds from qemu's start (the final one, after a KVM fallback) to the line. */
  seconds: number;
}

/** Why KVM failed to run a guest earlier in this process: later boots go straight to TCG. */
let kvmBroken: string | undefined;

const DEFAULT_PROBE_MS = 10_000;

interface Resolved {
  label: string;
  source: DiskSource;
  arch?: Architecture;
  firmware?: Firmware;
}

/** A file, an NBD URI, or an image of the repository (by name, digest or unique digest prefix). */
async function resolveImage(image: string, o: BootOptions): Promise<Resolved> {
  if (/^nbd(\+\w+)?:\/\//.test(image)) {
    parseNbdUri(image);
    return { label: image, source: { kind: 'nbd', location: image, format: 'raw' } };
  }
  if (existsSync(image) && (await stat(image)).isFile()) {
    const path = resolve(image);
    return { label: image, source: { kind: 'file', location: path, format: await sniffFile(path) } };
  }
  const repoPath = repositoryPath(o.repo);
  const repo = openIfExists(repoPath);
  if (!repo) throw new OsfarmError('OSFARM_NOT_FOUND', `no file ${image}, and no repository at ${repoPath} to look it up in (give --repo or $OSFARM_REPO)`);
  const entry = repo.resolve(image);
  const meta = buildMeta(entry);
  const spec = meta?.spec as (Record<string, unknown> & { architecture?: Architecture }) | undefined;
  // The spec's firmware: uefi, bios, or hybrid (a disk both boot, started through UEFI here).
  const fw = typeof spec?.firmware === 'string' ? (spec.firmware === 'hybrid' ? 'uefi' : spec.firmware) : undefined;
  return {
    label: entry.name ?? entry.digest.slice(0, 16),
    source: { kind: 'file', location: entry.path, format: await sniffFile(entry.path) },
    arch: spec?.architecture,
    firmware: fw === 'uefi' || fw === 'bios' ? fw : undefined,
  };
}

function chooseMode(o: BootOptions, r: Resolved, layout: DiskLayout, m: Machine, warn: (w: string) => void): BootMode {
  if (o.kernelBoot) return 'kernel';
  if (layout.bareFs) {
    throw new OsfarmError('OSFARM_BOOT_FAILED', `${r.label} is a bare file system (no partition table, no boot loader): boot it with --kernel-boot if it holds a kernel, or build the disk or qcow2 output`);
  }
  const fw = o.firmware ? parseFirmware(o.firmware) : (r.firmware ?? (layout.esp ? 'uefi' : 'bios'));
  if (fw === 'bios' && !m.bios) throw new OsfarmError('OSFARM_BOOT_FAILED', `${m.arch} machines have no BIOS: boot ${r.label} with --firmware uefi or --kernel-boot`);
  if (fw === 'uefi' && !layout.esp) warn(`${r.label} has no EFI system partition: UEFI will likely find nothing to boot (try --firmware bios)`);
  if (fw === 'bios' && !layout.mbrBootCode) warn(`${r.label} has no boot code in its MBR: a BIOS will likely find nothing to boot (try --firmware uefi)`);
  return fw;
}

function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const s = createServer();
    s.once('error', rej);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as { port: number };
      s.close(() => res(port));
    });
  });
}

/** The VM's directory: `keep` (new or empty), else a temporary one. */
async function vmDir(o: BootOptions): Promise<{ dir: string; kept: boolean }> {
  if (o.keep) {
    const dir = resolve(o.keep);
    await mkdir(dir, { recursive: true });
    if ((await readdir(dir)).length > 0) throw invalidArgument(`--keep ${o.keep}: the directory is not empty (give a new or empty one; it receives the overlay and the console log)`);
    return { dir, kept: true };
  }
  const base = join(o.workDir ?? defaultWorkDir(), 'boot');
  await mkdir(base, { recursive: true });
  return { dir: await mkdtemp(join(base, 'vm-')), kept: false };
}

/** Waits for KVM to show it runs the guest: 'ok', or why not. */
async function probeKvm(run: QemuRun, ms: number, signal?: AbortSignal): Promise<string> {
  let timer: NodeJS.Timeout | undefined;
  let tick: NodeJS.Timeout | undefined;
  const outcomes: Promise<string>[] = [
    run.kvmFailed.then((line) => `qemu: ${line}`),
    run.exited.then((e) => `qemu ended (${describeExit(e)}) before any console output${run.stderr.length ? `: ${run.stderr.slice(-2).join(' ')}` : ''}`),
    new Promise((r) => (timer = setTimeout(() => r(`no console output within ${Math.round(ms / 1000)} s`), ms))),
    new Promise((r) => (tick = setInterval(() => run.firstByteMs !== undefined && r('ok'), 100))),
  ];
  if (signal) outcomes.push(new Promise((r) => signal.addEventListener('abort', () => r('aborted'), { once: true })));
  try {
    return await Promise.race(outcomes);
  } finally {
    clearTimeout(timer);
    clearInterval(tick);
  }
}

/** A running VM: its console, SSH into it, and its end. Disposable (`await using vm = await boot(…)`). */
export class VmHandle implements AsyncDisposable {
  private stopping: Promise<QemuExit> | undefined;

  constructor(
    readonly info: BootInfo,
    private readonly run: QemuRun,
    private readonly con: Console,
    private readonly log: WriteStream,
    private readonly options: BootOptions,
  ) {
    options.signal?.addEventListener('abort', () => void this.stop(), { once: true });
  }

  /** The console's bytes since qemu started (after a KVM fallback: the TCG run's). */
  get console(): Readable {
    return this.con.stream;
  }

  /** Resolves when qemu ends, by itself or by stop(). */
  get exited(): Promise<QemuExit> {
    return this.run.exited;
  }

  /** The last console lines, escapes removed. */
  lastLines(n = 20): string[] {
    return this.con.lastLines(n);
  }

  /** Calls `fn` for each console line from now on; returns the unsubscribe. */
  onLine(fn: (line: string) => void): () => void {
    return this.con.onLine((line, complete) => complete && fn(line));
  }

  /** Types into the serial console. */
  write(data: string | Buffer): void {
    this.run.write(data);
  }

  /** The caller's signal for one call together with the boot's own: either ends the wait. */
  private signalFor(own?: AbortSignal): AbortSignal | undefined {
    const boot = this.options.signal;
    return own && boot ? AbortSignal.any([own, boot]) : (own ?? boot);
  }

  /** A failed boot, with what the console and qemu said. */
  private failure(what: string): OsfarmError {
    const silent = this.run.bytes === 0;
    const lines = this.con.lastLines(15);
    const parts = [
      `${this.info.image} (${this.info.mode === 'kernel' ? 'direct kernel boot' : this.info.mode.toUpperCase()}, ${this.info.accel.toUpperCase()}): ${what}`,
      silent ? 'the console stayed silent: the firmware found nothing to boot, or the boot loader is broken' : `last console lines:\n  ${lines.join('\n  ')}`,
    ];
    const err = this.run.stderr.filter((l) => !/terminating on signal/.test(l)).slice(-3);
    if (err.length) parts.push(`qemu said: ${err.join(' | ')}`);
    return new OsfarmError('OSFARM_BOOT_FAILED', parts.join('; '));
  }

  /**
   * Waits for a console line matching `pattern` (a line already seen counts). Fails with
   * OSFARM_BOOT_FAILED and the console's last lines when `timeoutMs` passes (default 300 s),
   * when qemu ends first, or when KVM fails.
   */
  waitFor(pattern: RegExp | string, opts: { timeoutMs?: number; signal?: AbortSignal } = {}): Promise<WaitResult> {
    const re = typeof pattern === 'string' ? new RegExp(pattern.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')) : new RegExp(pattern.source, pattern.flags.replace('g', ''));
    const timeoutMs = opts.timeoutMs ?? 300_000;
    const run = this.run;
    const seconds = (at = Date.now()) => Math.round((at - run.startedAt) / 100) / 10;
    const seen = this.con.find(re);
    if (seen !== undefined) return Promise.resolve({ line: seen.text, seconds: seconds(seen.at) });
    return new Promise((resolvePromise, reject) => {
      let finished = false;
      const cleanups: (() => void)[] = [];
      const done = (fn: () => void) => {
        if (finished) return;
        finished = true;
        for (const c of cleanups) c();
        fn();
      };
      cleanups.push(this.con.onLine((line) => re.test(line) && done(() => resolvePromise({ line, seconds: seconds() }))));
      const timer = setTimeout(() => done(() => reject(this.failure(`no console line matched ${re} within ${Math.round(timeoutMs / 1000)} s`))), timeoutMs);
      cleanups.push(() => clearTimeout(timer));
      void run.exited.then((e) => done(() => reject(this.failure(`qemu ended (${describeExit(e)}) before a console line matched ${re}`))));
      void run.kvmFailed.then((line) => done(() => reject(this.failure(`KVM cannot run this guest (${line}): boot with --accel tcg`))));
      const signal = this.signalFor(opts.signal);
      if (signal) {
        const onAbort = () => done(() => reject(abortError(signal, 'waiting for the console was cancelled')));
        if (signal.aborted) return onAbort();
        signal.addEventListener('abort', onAbort, { once: true });
        cleanups.push(() => signal.removeEventListener('abort', onAbort));
      }
    });
  }

  /** ssh's command line into the guest (through the forwarded port), with `command` if given. */
  ssh(command?: string, opts: { user?: string; key?: string } = {}): string[] {
    return ['ssh', ...sshArgs({ port: this.info.sshPort, user: opts.user ?? this.options.sshUser, key: opts.key ?? this.options.sshKey }, command)];
  }

  /**
   * Runs a shell command in the guest over SSH (waiting for its sshd, up to `timeoutMs`,
   * default 120 s). Fails with OSFARM_BOOT_FAILED if the guest refuses the key or qemu ends.
   */
  async exec(command: string, opts: { user?: string; key?: string; timeoutMs?: number; signal?: AbortSignal } = {}): Promise<ExecResult> {
    const ended = new AbortController();
    void this.run.exited.then(() => ended.abort());
    const caller = this.signalFor(opts.signal);
    const signal = caller ? AbortSignal.any([caller, ended.signal]) : ended.signal;
    try {
      return await sshExec({ port: this.info.sshPort, user: opts.user ?? this.options.sshUser, key: opts.key ?? this.options.sshKey }, command, { timeoutMs: opts.timeoutMs ?? 120_000, signal });
    } catch (err) {
      if (caller?.aborted) throw abortError(caller, `running ${JSON.stringify(command)} over SSH was cancelled`);
      if (ended.signal.aborted) throw this.failure(`qemu ended (${describeExit(await this.run.exited)}) while running ${JSON.stringify(command)} over SSH`);
      throw err;
    }
  }

  /** Ends qemu and removes the VM's directory (unless kept). Idempotent. */
  stop(): Promise<QemuExit> {
    this.stopping ??= (async () => {
      const exit = await this.run.stop();
      this.con.end();
      await new Promise<void>((r) => this.log.end(r));
      if (!this.info.kept) await rm(this.info.dir, { recursive: true, force: true });
      return exit;
    })();
    return this.stopping;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.stop();
  }
}

/**
 * Boots `image`: a disk file (raw or qcow2), an NBD export (`nbd+unix:///NAME?socket=PATH`),
 * or an image of the repository by name or digest. Resolves once qemu runs under its final
 * accelerator (after the KVM probe); wait for the boot with `waitFor`.
 */
export async function boot(image: string, options: BootOptions = {}): Promise<VmHandle> {
  const o = options;
  throwIfAborted(o.signal);
  if (o.firmware !== undefined) parseFirmware(o.firmware);
  const accel = parseAccel(o.accel ?? 'auto');
  if (o.cpus !== undefined && (!Number.isInteger(o.cpus) || o.cpus < 1)) throw invalidArgument(`cpus must be a whole number ≥ 1 (got ${o.cpus})`);
  if (o.memoryMiB !== undefined && (!Number.isInteger(o.memoryMiB) || o.memoryMiB < 128)) throw invalidArgument(`memory must be at least 128 MiB (got ${o.memoryMiB})`);
  if (o.sshPort !== undefined && (!Number.isInteger(o.sshPort) || o.sshPort < 1 || o.sshPort > 65535)) throw invalidArgument(`the SSH port must be 1–65535 (got ${o.sshPort})`);
  const warnings: string[] = [];
  const warn = (w: string) => {
    warnings.push(w);
    o.onWarning?.(w);
  };

  const r = await resolveImage(image, o);
  const arch = o.arch ?? r.arch;
  const { dir, kept } = await vmDir(o);
  const log = createWriteStream(join(dir, 'console.log'));
  // Copies of parts of the disk for debugfs and mtools: gone before qemu starts.
  const scratch = join(dir, 'scratch');
  await mkdir(scratch);
  let run: QemuRun | undefined;
  try {
    await requireTool('qemu-img', 'qemu-utils', 'osfarm boot');
    const layout = await readLayout(r.source, scratch, o.signal);
    const m = MACHINES[arch ?? layout.rootArch ?? hostArchitecture()];
    // What cannot boot at all is said before a missing tool (which could be installed in vain).
    const mode = chooseMode(o, r, layout, m, warn);
    await requireTool(m.qemu, m.package, `booting a ${m.arch} image`);
    const firmware = mode === 'uefi' ? await findUefi(m, o.firmwareDirs) : undefined;
    const uefi = firmware && { code: firmware.code, vars: join(dir, 'efivars.fd') };
    let kernel: KernelBoot | undefined;
    if (mode === 'kernel') {
      await requireTool('debugfs', 'e2fsprogs', '--kernel-boot');
      kernel = await kernelBoot(r.label, r.source, layout, m, dir, scratch, o.signal);
    }
    await rm(scratch, { recursive: true, force: true });
    const overlay = join(dir, 'overlay.qcow2');
    const plan: QemuPlan = {
      machine: m,
      accel: 'tcg',
      mode,
      cpus: o.cpus ?? Math.min(2, availableParallelism()),
      memoryMiB: o.memoryMiB ?? 1024,
      overlay,
      sshPort: o.sshPort ?? (await freePort()),
      uefi,
      kernel,
    };

    let accels: ('kvm' | 'tcg')[];
    if (accel === 'tcg') accels = ['tcg'];
    else {
      const why = (await kvmUnavailable(m)) ?? (accel === 'auto' ? kvmBroken : undefined);
      if (why && accel === 'kvm') throw new OsfarmError('OSFARM_BOOT_FAILED', `--accel kvm: ${why}; boot with --accel tcg or auto`);
      if (why) warn(`${why}: running under TCG (emulated, several times slower than KVM)`);
      accels = why ? ['tcg'] : accel === 'kvm' ? ['kvm'] : ['kvm', 'tcg'];
    }

    const con = new Console();
    for (const [i, a] of accels.entries()) {
      plan.accel = a;
      // A fresh overlay and variable store for each start: a failed KVM start may have written to them.
      await rm(overlay, { force: true });
      await createOverlay(r.source, overlay, o.signal);
      if (firmware && uefi) await copyFile(firmware.vars, uefi.vars);
      con.reset();
      run = new QemuRun([m.qemu, ...qemuArgs(plan)], con, log);
      if (a === 'tcg' || i === accels.length - 1) break;
      const verdict = await probeKvm(run, o.kvmProbeMs ?? DEFAULT_PROBE_MS, o.signal);
      if (verdict === 'ok') break;
      await run.stop();
      throwIfAborted(o.signal);
      kvmBroken = `KVM could not run a guest earlier in this process (${verdict})`;
      warn(`KVM cannot run this guest here (${verdict}): restarting under TCG (emulated, several times slower)`);
    }
    const info: BootInfo = {
      image: r.label,
      disk: r.source,
      arch: m.arch,
      mode,
      accel: plan.accel,
      cpus: plan.cpus,
      memoryMiB: plan.memoryMiB,
      sshPort: plan.sshPort,
      dir,
      overlay,
      kept,
      kernel: kernel ? { version: kernel.version, cmdline: kernel.cmdline, cmdlineFrom: kernel.cmdlineFrom } : null,
      warnings,
      argv: run!.argv,
    };
    await writeFile(join(dir, 'boot.json'), `${JSON.stringify(info, null, 2)}\n`);
    return new VmHandle(info, run!, con, log, o);
  } catch (err) {
    await run?.stop();
    log.end();
    if (!kept) await rm(dir, { recursive: true, force: true });
    throw err;
  }
}
