/** `osfarm boot`: runs an image under qemu with its serial console on the terminal. */
import { invalidArgument } from '../../base/errors.js';
import { parseSize } from '../../base/size.js';
import { bootAny } from '../../app/lazy-boot.js';
import type { BootInfo, ExecResult, QemuExit, WaitResult } from '../../boot/index.js';
import { parseAccel, parseFirmware } from '../../boot/index.js';
import type { LazyExport, LazyPullResult } from '../../transfer/lazy/export.js';
import { type Command, flag, str, strs, wholeNumber } from '../command.js';
import { bytes } from '../format.js';
import { finishLazy, lazyEvents, markProfile } from '../boot-lazy.js';

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
  section: 'build',
  summary: 'run an image under qemu (UEFI, BIOS or its kernel directly) with its serial console on the terminal',
  usage: ['IMAGE|NAME|DIGEST|http://HOST:PORT/images/NAME [--firmware uefi|bios] [--kernel-boot] [--memory 1G] [--cpus N] [--until REGEX] [--exec CMD] [--timeout S] [flags]'],
  description:
    'IMAGE is a disk file or an image of the repository; a URL, or an image only partly here, is served lazily over NBD while it arrives (docs/lazy-boot.md). Interactive: the console is the terminal and Ctrl-] stops the VM. With --until or --exec it waits for the console line or runs the command over SSH, then stops the VM. KVM when it works, else TCG.',
  options: {
    memory: { type: 'string', short: 'm', value: 'SIZE', description: 'the VM\'s memory: MiB, or a size like 1536M, 2G (default 1G)' },
    cpus: { type: 'string', value: 'N', description: 'virtual CPUs (default 2, at most this machine\'s)' },
    'ssh-port': { type: 'string', value: 'N', description: 'the host port forwarded to the guest\'s SSH (default: a free one)' },
    'ssh-key': { type: 'string', short: 'i', value: 'KEY', complete: 'file', description: 'the private key --exec logs in with' },
    'ssh-user': { type: 'string', value: 'USER', description: 'the user --exec logs in as (default root)' },
    firmware: { type: 'string', value: 'uefi|bios', choices: ['uefi', 'bios'], description: 'boot through OVMF (UEFI) or SeaBIOS (default: what the disk supports, UEFI first)' },
    'kernel-boot': { type: 'boolean', description: 'start the image\'s own kernel and initramfs directly (no firmware, no boot loader)' },
    accel: { type: 'string', value: 'auto|kvm|tcg', choices: ['auto', 'kvm', 'tcg'], description: 'the accelerator (default auto: KVM if it works, else TCG)' },
    keep: { type: 'string', value: 'DIR', complete: 'dir', description: 'keep the VM\'s overlay and console log in DIR' },
    until: { type: 'string', value: 'REGEX', description: 'wait for a console line matching REGEX, then stop the VM' },
    exec: { type: 'string', value: 'CMD', description: 'run CMD in the guest over SSH (after --until, if given), print its output, then stop the VM' },
    timeout: { type: 'string', value: 'S', description: 'stop the VM after S seconds (default 600 with --until or --exec)' },
    parallel: { type: 'string', value: 'N', description: 'a lazy boot\'s range requests in flight at once' },
    'no-prefetch': { type: 'boolean', description: 'a lazy boot fetches only the blocks the VM reads (the image is not published)' },
    trust: { type: 'string', multiple: true, value: 'KEYFILE', complete: 'file', description: 'a lazy boot requires a signature by this public key (may be repeated)' },
  },
  operands: { complete: 'file', min: 1, max: 1 },
  examples: [
    { command: 'osfarm boot vm.qcow2', what: 'boot a disk with its console on this terminal (Ctrl-] stops it)' },
    { command: 'osfarm boot app1.img --until "login:" --exec "systemctl is-system-running" -i ~/.ssh/id_ed25519', what: 'boot an image of the repository, wait for the login prompt, ask systemd over SSH' },
  ],
  async run(args, ctx) {
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
