// @ts-check
/**
 * Asking the API about what is being typed (a flow's source to the validate route, an Execute
 * form to the inputs' validate route): the question is sent once typing pauses, and only the
 * answer to the latest question is used. An older question's answer that comes after a newer
 * one was sent (a slow check of an older text) is dropped, and so is any answer once the page
 * has stopped asking (it was left, or the form redrawn).
 */

/**
 * @template T
 * @param {() => Promise<T>} ask sends the question about what is there now
 * @param {(answer: T) => void} use the latest question's answer
 * @param {(error: unknown) => void} failed the latest question's failure
 * @param {number} pauseMs how long typing pauses before `later` asks
 */
export function latestAnswer(ask, use, failed, pauseMs) {
  let asked = 0;
  /** @type {ReturnType<typeof setTimeout> | undefined} */
  let timer;
  /** Ask at once (a form just drawn, a source just read). */
  const now = async () => {
    clearTimeout(timer);
    const mine = ++asked;
    try {
      const answer = await ask();
      if (mine === asked) use(answer);
    } catch (error) {
      if (mine === asked) failed(error);
    }
  };
  return {
    now,
    /** Ask once typing pauses: each call puts the question off by `pauseMs` again. */
    later() {
      clearTimeout(timer);
      timer = setTimeout(now, pauseMs);
    },
    /** Ask no more: what is put off is dropped, and so are the answers still to come. */
    stop() {
      clearTimeout(timer);
      asked++;
    },
  };
}
