import type { Command } from '../command.js';
import compare from './compare.js';
import indexImage from './index-image.js';

/** Every top-level command, in the order --help lists them. */
export const commands: Command[] = [indexImage, compare] as Command[];
