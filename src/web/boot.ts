/**
 * Booting a repository image from the web: a boot is a job like a build (its own queue:
 * one VM at a time, CPU is what a VM takes), the guest's console lines are the job's `log`
 * events, and cancelling the job stops the VM.
 */
import { abortError, invalidArgument, OsfarmError } from '../base/errors.js';
import { boot, describeExit, parseAccel, parseFirmware, sniffFile } from '../boot/index.js';
import type { ImageEntry } from '../repo/index.js';
import { optField, readJson, type Route, sendJson } from './http.js';
import type { JobQueue } from './jobs.js';

export interface BootRoutesOptions {
  queue: JobQueue;
  repo: string;
  workDir: string;
  image(ref: string): ImageEntry;
}

/** How long a VM started from the web runs at most, unless the request says otherwise. */
const DEFAULT_TIMEOUT_S = 3600;

function wholeField(body: Record<string, unknown>, name: string, min: number, max: number): number | undefined {
  const v = body[name];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) throw invalidArgument(`${name} must be a whole number from ${min} to ${max}`);
  return v;
}

/** A route with its documentation: api.ts's DocumentedRoute, spelled out here because api.ts imports this module. */
type BootRoute = Route & { doc: { tag: 'images'; summary: string; body: Record<string, { description: string; type?: string }>; response: { status: number; description: string } } };

export function bootRoutes(o: BootRoutesOptions): BootRoute[] {
  return [
    {
      method: 'POST', path: '/api/images/:ref/boot',
      doc: {
        tag: 'images', summary: 'Boot the image under qemu as a job: its console lines are `log` events, DELETE /api/jobs/{id} stops the VM; the guest\'s SSH port is forwarded on the server\'s loopback',
        body: {
          firmware: { description: 'uefi or bios (default: the image\'s own)' },
          kernelBoot: { description: 'start the image\'s kernel directly', type: 'boolean' },
          accel: { description: 'auto (default), kvm or tcg' },
          memory: { description: 'MiB (default 1024)', type: 'integer' },
          cpus: { description: 'default 2', type: 'integer' },
          timeout: { description: `seconds until the VM is stopped (default ${DEFAULT_TIMEOUT_S})`, type: 'integer' },
        },
        response: { status: 202, description: 'Job; 400 for an image that is not a disk' },
      },
      handler: async ({ req, res, params }) => {
        const body = await readJson(req);
        const fw = optField(body, 'firmware');
        const accel = optField(body, 'accel');
        if (body.kernelBoot !== undefined && typeof body.kernelBoot !== 'boolean') throw invalidArgument('kernelBoot must be true or false');
        const options = {
          repo: o.repo,
          workDir: o.workDir,
          firmware: fw === undefined ? undefined : parseFirmware(fw),
          accel: accel === undefined ? undefined : parseAccel(accel),
          kernelBoot: body.kernelBoot === true,
          memoryMiB: wholeField(body, 'memory', 128, 65536),
          cpus: wholeField(body, 'cpus', 1, 64),
        };
        const timeout = wholeField(body, 'timeout', 1, 86400) ?? DEFAULT_TIMEOUT_S;
        const entry = o.image(params.ref!);
        await sniffFile(entry.path); // refuse a tar or squashfs now, not in the job
        const name = entry.name ?? entry.digest.slice(0, 12);
        const info = await o.queue.submit('boot', `boot ${name}`, async ({ signal, emit }) => {
          emit({ type: 'phase', phase: 'starting' });
          const started = Date.now();
          const vm = await boot(entry.digest, { ...options, signal, onWarning: (w) => emit({ type: 'log', line: `osfarm: warning: ${w}` }) });
          try {
            const i = vm.info;
            emit({ type: 'phase', phase: 'running', detail: `${i.arch}, ${i.mode === 'kernel' ? `kernel ${i.kernel?.version}` : i.mode.toUpperCase()}, ${i.accel.toUpperCase()}; ssh -p ${i.sshPort} root@127.0.0.1 on the server` });
            const off = vm.onLine((line) => emit({ type: 'log', line }));
            const timer = setTimeout(() => void vm.stop(), timeout * 1000);
            const exit = await vm.exited;
            clearTimeout(timer);
            off();
            if (signal.aborted) throw abortError(signal, 'the VM was stopped');
            if (!exit.stopped && exit.code !== 0) throw new OsfarmError('OSFARM_BOOT_FAILED', `qemu ended (${describeExit(exit)}): ${vm.lastLines(3).join(' | ')}`);
            return { image: entry.digest, arch: i.arch, mode: i.mode, accel: i.accel, sshPort: i.sshPort, warnings: i.warnings, exit, seconds: Math.round((Date.now() - started) / 1000) };
          } finally {
            await vm.stop();
          }
        }, { image: entry.digest });
        sendJson(res, 202, info, { location: `/api/jobs/${info.id}` });
      },
    },
  ];
}
