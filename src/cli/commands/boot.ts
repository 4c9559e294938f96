/** `osfarm boot`: runs an image under qemu with its serial console on the terminal. */
import { invalidArgument } from '../../base/errors.js';
import { parseSize } from '../../base/size.js';
import { bootAny } from '../../app/lazy-boot.js';
import type { BootInfo, ExecResult, QemuExit, WaitResult } from '../../boot/index.js';
import { parseAccel, parseFirmware } from '../../boot/index.js';
import type { LazyExport, LazyPullResult } from '../../transfer/lazy/export.js';
import { type Command, flag, str, strs, wholeNumber } from '../command.js';
import { bytes } from '../format.js';
import { finishLazy, lazyEvents, markProfile } from './boot-lazy.js';

interface BootResult extends Omit<BootInfo, 'argv' | 'disk'> {
  until: WaitResult | null;
  exec: ExecResult | null;
  exit: QemuExit;
  seconds: number;
  /** Booted lazily (a URL, or a partly present image): the lazy pull's result once published (null if stopped before, or --no-prefetch). */
  lazy?: LazyPullResult | null;
  /** Booted lazily: the export's counters when --until matched (what the boot took before its marker). */
  lazyAtMarker?: ReturnType<LazyExport['stats']> | null;
}

/** Ctrl-]: ends the VM from the terminal (as telnet and virsh console do); every other key goes to the guest. */
const DETACH = 0x1d;

/** Memory as qemu's -m takes it: a plain number is MiB; 1G, 1536M are sizes. */
function memoryMiB(text: string | undefined): number | undefined {
  if (text === undefined) return undefined;
  const mib = /^\d+$/.test(text) ? Number(text) : parseSize(text, '--memory') / (1024 * 1024);
  if (!Number.isInteger(mib) || mib < 128) throw invalidArgument(`--memory ${text}: give at least 128 MiB in whole MiB (1024, 1536M, 2G)`);
  return mib;
}

const command: Command<BootResult> = {
  name: 'boot',
  usage: 'boot IMAGE|NAME|DIGEST|http://HOST:PORT/images/NAME [--firmware uefi|bios] [--kernel-boot] [--accel auto|kvm|tcg] [--memory 1G] [--cpus N] [--ssh-port N] [-i KEY] [--ssh-user U] [--keep DIR] [--until REGEX] [--exec CMD] [--timeout S] [--parallel N] [--no-prefetch] [--trust KEYFILE]...',
  options: {
    memory: { type: 'string', short: 'm' },
    cpus: { type: 'string' },
    'ssh-port': { type: 'string' },
    'ssh-key': { type: 'string', short: 'i' },
    'ssh-user': { type: 'string' },
    firmware: { type: 'string' },
    'kernel-boot': { type: 'boolean' },
    accel: { type: 'string' },
    keep: { type: 'string' },
    until: { type: 'string' },
    exec: { type: 'string' },
    timeout: { type: 'string' },
    parallel: { type: 'string' },
    'no-prefetch': { type: 'boolean' },
    trust: { type: 'string', multiple: true },
  },
  allowPositionals: true,
  async run(args, ctx) {
    if (args.positionals.length !== 1) throw invalidArgument(`give one image: a disk file, a name or digest in the repository, or http://HOST:PORT/images/NAME (got ${args.positionals.length})`);
    const firmware = str(args, 'firmware');
    const accel = str(args, 'accel');
    const until = str(args, 'until');
    const execCmd = str(args, 'exec');
    const timeout = wholeNumber(args, 'timeout', 1, 86_400);
    let untilRe: RegExp | undefined;
    try {
      untilRe = until === undefined ? undefined : new RegExp(until);
    } catch (err) {
      throw invalidArgument(`--until: ${(err as Error).message}`);
    }
    const started = Date.now();
    const target = args.positionals[0]!;
    const bootOptions = {
      repo: ctx.repoPath,
      memoryMiB: memoryMiB(str(args, 'memory')),
      cpus: wholeNumber(args, 'cpus', 1, 1024),
      sshPort: wholeNumber(args, 'ssh-port', 1, 65_535),
      sshKey: str(args, 'ssh-key'),
      sshUser: str(args, 'ssh-user'),
      firmware: firmware === undefined ? undefined : parseFirmware(firmware),
      kernelBoot: flag(args, 'kernel-boot'),
      accel: accel === undefined ? undefined : parseAccel(accel),
      keep: str(args, 'keep'),
      signal: ctx.signal,
      onWarning: (w: string) => {
        ctx.info(`osfarm: warning: ${w}`);
        ctx.event({ type: 'warning', message: w });
      },
    };
    // A URL, or an image only partly here: served lazily over NBD while it arrives (docs/lazy-boot.md).
    const prefetch = !flag(args, 'no-prefetch');
    const lazy = { parallel: wholeNumber(args, 'parallel', 1, 64), prefetch, trust: strs(args, 'trust') };
    const { vm, exp } = await bootAny(target, { ...bootOptions, lazy, onLazyEvent: lazyEvents(ctx) });
    let profile: Promise<string> | undefined;
    const i = vm.info;
    const how = i.mode === 'kernel' ? `its kernel ${i.kernel?.version} directly` : i.mode.toUpperCase();
    ctx.info(`osfarm: booting ${i.image} (${i.arch}, ${how}, ${i.accel.toUpperCase()}); ssh: ${vm.ssh().join(' ')}`);
    ctx.event({ type: 'started', accel: i.accel, mode: i.mode, sshPort: i.sshPort, dir: i.dir });
    if (ctx.json) vm.onLine((line) => ctx.event({ type: 'console', line }));
    else vm.console.pipe(process.stdout, { end: false });

    const interactive = !ctx.json && untilRe === undefined && execCmd === undefined && process.stdin.isTTY;
    if (interactive) {
      ctx.info('osfarm: the console is this terminal; Ctrl-] stops the VM');
      process.stdin.setRawMode(true);
      process.stdin.on('data', (d: Buffer) => (d.includes(DETACH) ? void vm.stop() : vm.write(d)));
    }
    try {
      let untilResult: WaitResult | null = null;
      let execResult: ExecResult | null = null;
      let atMarker: BootResult['lazyAtMarker'] = null;
      if (untilRe || execCmd !== undefined) {
        const deadline = started + (timeout ?? 600) * 1000;
        if (untilRe) {
          untilResult = await vm.waitFor(untilRe, { timeoutMs: deadline - Date.now(), signal: ctx.signal });
          // At once, for --json readers timing the boot (the console event of the line may come later, or not before the VM stops).
          ctx.event({ type: 'matched', ...untilResult });
        }
        if (exp && untilResult) {
          atMarker = exp.stats();
          if (prefetch) profile = markProfile(exp);
        }
        if (execCmd !== undefined) {
          execResult = await vm.exec(execCmd, { timeoutMs: Math.max(1000, deadline - Date.now()), signal: ctx.signal });
          if (execResult.code !== 0) process.exitCode = 1;
        }
        await vm.stop();
      } else if (timeout !== undefined) {
        const timer = setTimeout(() => void vm.stop(), timeout * 1000);
        await vm.exited.finally(() => clearTimeout(timer));
      }
      const exit = await vm.exited;
      await vm.stop();
      const { argv: _argv, disk: _disk, ...info } = i;
      const seconds = Math.round((Date.now() - started) / 100) / 10;
      const result = exp && (await finishLazy(exp, ctx, profile, prefetch));
      return { ...info, until: untilResult, exec: execResult, exit, seconds, ...(exp ? { lazy: result, lazyAtMarker: atMarker } : {}) };
    } finally {
      if (interactive) {
        process.stdin.setRawMode(false);
        process.stdin.pause();
      }
      vm.console.unpipe(process.stdout);
      await vm.stop();
      await exp?.close();
    }
  },
  render(r) {
    const lines = [''];
    if (r.until) lines.push(`osfarm: matched after ${r.until.seconds} s: ${r.until.line}`);
    if (r.exec) lines.push(r.exec.stdout.trimEnd(), ...(r.exec.stderr.trim() ? [r.exec.stderr.trimEnd()] : []), `osfarm: the command exited with ${r.exec.code}`);
    const m = r.lazyAtMarker;
    if (m) lines.push(`osfarm: at the marker: ${m.fetchedBlocks} blocks fetched (${bytes(m.fetchedBytes)}), ${m.localBlocks} copied locally, ${m.haveBlocks} of ${m.blockCount} here`);
    if (r.lazy) lines.push(`osfarm: image ${r.lazy.digest} published: ${r.lazy.blocksFetched} blocks fetched, ${r.lazy.blocksLocal} copied from the repository`);
    lines.push(`osfarm: VM ${r.exit.stopped ? 'stopped' : `ended (${r.exit.code !== null ? `exit status ${r.exit.code}` : `signal ${r.exit.signal}`})`} after ${r.seconds} s${r.kept ? `; its overlay and console log are in ${r.dir}` : ''}`);
    return lines.join('\n');
  },
};
export default command;
