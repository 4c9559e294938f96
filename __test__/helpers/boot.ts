/**
 * A minimal qemu boot for the disk writer's tests, until src/boot's runner (issue 10's
 * `osfarm boot`) is there to use instead: boots a disk under TCG (this machine's /dev/kvm
 * cannot run a guest) with OVMF or SeaBIOS, never writing the disk (snapshot=on), waits for
 * the image's boot marker on the serial console, then runs a command over SSH.
 */
import { spawn, spawnSync } from 'node:child_process';
import { copyFileSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

import { BOOT_MARKER } from '../../src/spec/distros.js';


export interface BootResult {
  /** Seconds from qemu's start to the marker line, or null if it never came. */
  marker: number | null;
  /** The SSH command's output, exit status and seconds (null when not asked or not reached). */
  ssh: { stdout: string; status: number; seconds: number } | null;
  /** The console's last lines (for a failure's message). */
  tail: string;
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
    s.on('error', reject);
  });
}

export async function bootDisk(disk: string, opts: { firmware: 'uefi' | 'bios'; format?: 'raw' | 'qcow2'; sshKey?: string; ssh?: string; timeoutSec?: number }): Promise<BootResult> {
  const dir = mkdtempSync(join(tmpdir(), 'osfarm-disk-boot-'));
  const log = join(dir, 'console.log');
  const port = await freePort();
  const fw: string[] = [];
  if (opts.firmware === 'uefi') {
    copyFileSync('/usr/share/OVMF/OVMF_VARS_4M.fd', join(dir, 'vars.fd'));
    fw.push('-drive', 'if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd', '-drive', `if=pflash,format=raw,unit=1,file=${join(dir, 'vars.fd')}`);
  }
  const started = Date.now();
  const qemu = spawn('qemu-system-x86_64', [
    '-accel', 'tcg', '-smp', '2', '-m', '1024', '-display', 'none', '-monitor', 'none', '-no-reboot',
    '-serial', `file:${log}`, ...fw,
    '-drive', `file=${disk},format=${opts.format ?? 'raw'},if=virtio,snapshot=on`,
    '-netdev', `user,id=n0,hostfwd=tcp:127.0.0.1:${port}-:22`, '-device', 'virtio-net-pci,netdev=n0',
  ], { stdio: ['ignore', 'ignore', 'pipe'] });
  let exited = false;
  qemu.on('exit', () => (exited = true));
  const console = () => {
    try {
      return readFileSync(log, 'utf8');
    } catch {
      return '';
    }
  };
  const result: BootResult = { marker: null, ssh: null, tail: '' };
  const deadline = started + (opts.timeoutSec ?? 300) * 1000;
  try {
    while (Date.now() < deadline && !exited) {
      if (result.marker === null && console().includes(BOOT_MARKER)) {
        result.marker = (Date.now() - started) / 1000;
        if (!opts.ssh) break;
      }
      if (result.marker !== null && opts.ssh) {
        const r = spawnSync('ssh', ['-q', '-p', String(port), '-i', opts.sshKey!, '-o', 'BatchMode=yes', '-o', 'StrictHostKeyChecking=no', '-o', 'UserKnownHostsFile=/dev/null', '-o', 'ConnectTimeout=5', 'root@127.0.0.1', opts.ssh], { encoding: 'utf8', timeout: 20_000 });
        // 255: ssh could not connect yet.
        if (r.status !== null && r.status !== 255) {
          result.ssh = { stdout: r.stdout, status: r.status, seconds: (Date.now() - started) / 1000 };
          break;
        }
      }
      await sleep(500);
    }
  } finally {
    qemu.kill('SIGKILL');
    result.tail = console().replace(/\r/g, '').split('\n').slice(-25).join('\n');
    rmSync(dir, { recursive: true, force: true });
  }
  return result;
}
