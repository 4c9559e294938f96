/**
 * One qemu process: its command line, the copy-on-write overlay it writes to, its console
 * on stdin/stdout, its stderr, and its end. A boot may run qemu twice (KVM, then TCG).
 */
import type { WriteStream } from 'node:fs';
import type { Writable } from 'node:stream';

import { OsfarmError } from '../base/errors.js';
import { runChecked, runPiped } from '../host/process.js';
import type { Console } from './console.js';
import type { DiskSource } from './disk.js';
import type { KernelBoot } from './kernel.js';
import type { BootMode, Machine } from './machine.js';

export interface QemuPlan {
  machine: Machine;
  accel: 'kvm' | 'tcg';
  mode: BootMode;
  cpus: number;
  memoryMiB: number;
  overlay: string;
  sshPort: number;
  /** UEFI: the firmware code and this boot's copy of the variable store. */
  uefi?: { code: string; vars: string };
  kernel?: KernelBoot;
}

/**
 * The guest's disk is a qcow2 overlay over the image: the image (a repository's file, or an
 * NBD export) is only read. Clusters of 4 KiB, the block size: with qcow2's default 64 KiB a
 * 4 KiB write would first read 60 KiB around it from the image (over NBD: fetch them).
 */
export async function createOverlay(src: DiskSource, overlay: string, signal?: AbortSignal): Promise<void> {
  await runChecked('creating the boot overlay', 'qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4096', '-b', src.location, '-F', src.format, overlay], {
    signal,
    errorCode: 'OSFARM_BOOT_FAILED',
  });
}

export function qemuArgs(p: QemuPlan): string[] {
  const m = p.machine;
  const cpu = p.accel === 'kvm' ? ['-cpu', 'host'] : m.tcgCpu ? ['-cpu', m.tcgCpu] : [];
  const firmware =
    p.mode === 'uefi'
      ? ['-drive', `if=pflash,format=raw,unit=0,readonly=on,file=${p.uefi!.code.replaceAll(',', ',,')}`, '-drive', `if=pflash,format=raw,unit=1,file=${p.uefi!.vars.replaceAll(',', ',,')}`]
      : p.mode === 'kernel'
        ? ['-kernel', p.kernel!.kernel, ...(p.kernel!.initrd ? ['-initrd', p.kernel!.initrd] : []), '-append', p.kernel!.cmdline]
        : [];
  return [
    // No default devices: no CD-ROM for the firmware to try first, no monitor, no display.
    '-nodefaults', '-no-user-config', '-display', 'none',
    ...m.machine, '-accel', p.accel, ...cpu, '-smp', String(p.cpus), '-m', String(p.memoryMiB),
    // The first serial port is the console, on qemu's stdin/stdout; ^C there is the guest's.
    '-chardev', 'stdio,id=console,signal=off', '-serial', 'chardev:console',
    ...firmware,
    '-drive', `file=${p.overlay.replaceAll(',', ',,')},format=qcow2,if=virtio,discard=unmap`,
    // No option ROM on the NIC: a disk the firmware cannot boot ends in the firmware's own messages, not in iPXE's.
    '-netdev', `user,id=net0,hostfwd=tcp:127.0.0.1:${p.sshPort}-:22`, '-device', 'virtio-net-pci,netdev=net0,romfile=',
    // Entropy for the guest's first boot (SSH host keys) without waiting for the CPU jitter.
    '-device', 'virtio-rng-pci',
    // A reboot ends qemu: a boot loop becomes a failed boot, not a hang.
    '-no-reboot',
  ];
}

/** What qemu's stderr says when KVM cannot run the guest. */
export const KVM_FAILURE = /KVM internal error|emulation failure|kvm run failed|failed to initialize kvm|Could not access KVM|kvm_init_vcpu/i;

export interface QemuExit {
  code: number | null;
  signal: NodeJS.Signals | null;
  /** Stopped by osfarm (stop(), an abort), not ended by the guest. */
  stopped: boolean;
  /** qemu could not be started. */
  error?: OsfarmError;
}

export function describeExit(e: QemuExit): string {
  if (e.error) return e.error.message;
  if (e.stopped) return 'stopped';
  return e.code !== null ? `exit status ${e.code}` : `signal ${e.signal}`;
}

export class QemuRun {
  readonly startedAt = Date.now();
  readonly stderr: string[] = [];
  /** Milliseconds from start to the first console byte. */
  firstByteMs: number | undefined;
  bytes = 0;
  readonly exited: Promise<QemuExit>;
  /** Resolves with qemu's message when it reports that KVM failed. */
  readonly kvmFailed: Promise<string>;
  private stdin: Writable | undefined;
  private readonly controller = new AbortController();

  constructor(readonly argv: string[], console: Console, log: WriteStream) {
    let kvmFailed!: (line: string) => void;
    this.kvmFailed = new Promise((r) => (kvmFailed = r));
    const [bin, ...args] = argv;
    this.exited = runPiped(
      bin!,
      args,
      {
        signal: this.controller.signal,
        errorCode: 'OSFARM_BOOT_FAILED',
        endWithParent: true,
        stdin: (w) => (this.stdin = w),
        onLine: (line) => {
          this.stderr.push(line);
          if (this.stderr.length > 200) this.stderr.shift();
          if (KVM_FAILURE.test(line)) kvmFailed(line.trim());
        },
      },
      async (stdout) => {
        for await (const chunk of stdout as AsyncIterable<Buffer>) {
          this.firstByteMs ??= Date.now() - this.startedAt;
          this.bytes += chunk.length;
          log.write(chunk);
          console.push(chunk);
        }
      },
    ).then(
      (r) => ({ code: r.code, signal: r.signal, stopped: false }),
      (err: unknown) => {
        if (err instanceof OsfarmError && err.code === 'OSFARM_ABORTED') return { code: null, signal: 'SIGTERM' as const, stopped: true };
        return { code: null, signal: null, stopped: false, error: err instanceof OsfarmError ? err : new OsfarmError('OSFARM_BOOT_FAILED', String(err)) };
      },
    );
  }

  /** Types into the console. */
  write(data: string | Buffer): void {
    this.stdin?.write(data);
  }

  /** Ends qemu (SIGTERM to its process group, SIGKILL later) and waits for it. */
  stop(): Promise<QemuExit> {
    this.controller.abort();
    return this.exited;
  }
}
