import type { Command } from '../command.js';

/** A top-level command: listed by --help without loading it; loaded when it runs. */
export interface CommandEntry {
  name: string;
  summary: string;
  load(): Promise<{ default: Command<any> }>;
}

/** Every top-level command, in the order --help lists them. */
export const commands: CommandEntry[] = [
  { name: 'pack', summary: 'write a tree, tar or tar.gz as a block-aligned tar', load: () => import('./pack.js') },
  { name: 'index', summary: 'hash every block of an image and write its .osfi index', load: () => import('./index-image.js') },
  { name: 'compare', summary: 'common blocks of two images or indexes, both ways', load: () => import('./compare.js') },
  { name: 'repo', summary: 'the image repository: init, add, ls, show, rm, verify, rebuild', load: () => import('./repo.js') },
  { name: 'plan', summary: 'which blocks of an image the repository has, and which a transfer must send', load: () => import('./plan.js') },
  { name: 'build', summary: 'build an image in a chroot from a spec (YAML, JSON, XML) or genfs-style flags', load: () => import('./build.js') },
  { name: 'boot', summary: 'run an image under qemu (UEFI, BIOS or its kernel directly) with its serial console on the terminal', load: () => import('./boot.js') },
  { name: 'images', summary: 'built images by request: find SPEC, show NAME|DIGEST, export NAME|DIGEST (spec as XML), history NAME', load: () => import('./images.js') },
  { name: 'stages', summary: 'the stage cache: ls, gc --max-size N, verify, rm <tag>, backends', load: () => import('./stages.js') },
  { name: 'push', summary: 'send an image to an osfarm receive, only the blocks it lacks', load: () => import('./push.js') },
  { name: 'receive', summary: 'accept pushed images into the repository (TCP, shared token)', load: () => import('./receive.js') },
  { name: 'serve', summary: 'serve the repository over HTTP for pull (static-compatible URLs, ranges, cache headers)', load: () => import('./serve.js') },
  { name: 'pull', summary: 'fetch an image over HTTP, only the blocks the repository lacks (resumable, proxy-friendly)', load: () => import('./pull.js') },
  { name: 'worker', summary: 'a build farm worker: takes build jobs from Redis (BullMQ), builds them, pushes the images to the central repository', load: () => import('./worker.js') },
  { name: 'keys', summary: 'signing keys and trusted keys: generate, list, export, trust (signed image manifests)', load: () => import('./keys.js') },
];
