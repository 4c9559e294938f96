/** What the host's failures inside the stage store are: stage store errors (OSFARM_STAGE). */
export const STAGE_ERRORS = { errorCode: 'OSFARM_STAGE' } as const;
